//! The Sentinel watcher against real `redis-server` + `redis-sentinel` processes (`testbed::redis`), and
//! against a fake Sentinel that answers garbage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use havip_agent::config::{Dur, SentinelConfig, TlsConfig};
use havip_agent::secret::Secret;
use havip_agent::sentinel::{
    self, ConnectOptions, Event, ObservedEvent, Snapshot, WatchOptions, Watcher,
};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::logs::LogCapture;
use havip_testkit::testbed::redis::{LabSpec, LabTls, LabUser, RedisLab};
use tokio::sync::{broadcast, watch};

type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// Waits until `pred` holds for the latest snapshot; panics with `what` and the last snapshot otherwise.
async fn wait_snapshot(
    rx: &mut Snapshots,
    within: Duration,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = rx.borrow_and_update().clone();
        if pred(&s) {
            return s;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Err(_) => panic!("{what}: not within {within:?}; last snapshot: {s:#?}"),
            Ok(Err(_)) => panic!("{what}: the watcher stopped"),
            Ok(Ok(())) => {}
        }
    }
}

fn all_up(s: &Snapshot) -> bool {
    s.reachable() == s.total && s.sentinels.iter().all(|x| x.subscribed)
}

fn newest_addr(s: &Snapshot, master: &str) -> Option<SocketAddr> {
    s.newest(master).map(|n| n.addr())
}

/// Collects every event the watcher broadcasts, in the background.
fn record_events(mut rx: broadcast::Receiver<ObservedEvent>) -> Arc<Mutex<Vec<ObservedEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            out.lock().unwrap().push(e);
        }
    });
    seen
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64() * 1000.0
    } else {
        -((a - b).as_secs_f64() * 1000.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reports_the_master_the_epoch_and_a_majority() {
    // Arrange
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let cfg = lab.sentinel_config();
    let master = lab.master_name().to_owned();

    // Act
    let (_watcher, mut rx) = Watcher::spawn(&cfg, vec![master.clone()]);
    let snap = wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", all_up).await;

    // Assert
    assert!(snap.has_majority());
    let newest = snap.newest(&master).expect("a newest configuration");
    assert_eq!(newest.addr(), lab.redis_addr(0));
    assert_eq!(newest.epoch, 0);
    assert_eq!(newest.reported_by, lab.sentinel_addrs());
    assert!(newest.first_seen.is_some());
    assert_eq!(
        snap.view(&master, std::time::Instant::now()).down_after,
        Some(Duration::from_millis(1000))
    );
    for s in &snap.sentinels {
        let m = &s.masters[&master];
        assert_eq!((m.num_other_sentinels, m.quorum), (2, 2), "{}", s.addr);
        assert_eq!(m.flags, vec!["master".to_owned()]);
        assert!(!m.failover_in_progress);
        assert_eq!(s.error, None);
    }

    // The one-shot helpers used by `check` and `status`.
    let addr = &lab.sentinel_addrs()[1];
    let rtt = sentinel::ping(addr, &cfg).await.expect("ping");
    println!("sentinel ping round trip: {rtt:?}");
    let info = sentinel::query(addr, &cfg, &master).await.expect("query");
    assert_eq!(info.addr(), lab.redis_addr(0));
    let err = sentinel::query(addr, &cfg, "nosuchmaster")
        .await
        .unwrap_err();
    assert!(
        !err.is_link(),
        "an unknown master is a bad answer, not a dead link: {err}"
    );
    assert!(err.to_string().contains("No such master"), "{err}");
    let opts = ConnectOptions::sentinel(&cfg);
    let r0 = lab.redis_addr(0);
    let r1 = lab.redis_addr(1);
    assert!(
        sentinel::confirm_role(r0.ip(), r0.port(), &opts)
            .await
            .unwrap()
    );
    assert!(
        !sentinel::confirm_role(r1.ip(), r1.port(), &opts)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_switches_to_the_new_master_with_a_higher_epoch_when_the_master_is_killed() {
    // Arrange
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let old = lab.redis_addr(0);
    let (watcher, mut rx) = Watcher::spawn(&lab.sentinel_config(), vec![master.clone()]);
    let events = record_events(watcher.events());
    let before = wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", all_up).await;
    let old_epoch = before.newest(&master).unwrap().epoch;

    // Act
    let killed = Instant::now();
    lab.kill_redis(0);
    let after = wait_snapshot(&mut rx, Duration::from_secs(30), "newest switches", |s| {
        newest_addr(s, &master).is_some_and(|a| a != old)
    })
    .await;

    // Assert
    let newest = after.newest(&master).unwrap();
    assert!(
        newest.epoch > old_epoch,
        "epoch {} > {old_epoch}",
        newest.epoch
    );
    assert!(after.has_majority());
    let agreed = lab
        .wait_master(|a| a != old, Duration::from_secs(30))
        .await
        .expect("sentinels agree");
    assert_eq!(
        newest.addr(),
        agreed,
        "the watcher named the master the sentinels settled on"
    );

    // The timeline: when did the first +switch-master arrive, compared to the snapshot?
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_switch = loop {
        let found = events.lock().unwrap().iter().find_map(|e| match &e.event {
            Event::SwitchMaster { new, .. } if SocketAddr::new(new.0, new.1) == newest.addr() => {
                Some(e.clone())
            }
            _ => None,
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no +switch-master event observed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = newest.first_seen.expect("first_seen");
    let promoted = events
        .lock()
        .unwrap()
        .iter()
        .find(|e| matches!(e.event, Event::PromotedSlave { .. }))
        .map(|e| e.at);
    println!(
        "failover: master killed -> first +switch-master (from {}) {:.1} ms; snapshot showed epoch {} at {} \
         {:+.1} ms relative to that +switch-master (first reporter {:?}); +promoted-slave {}",
        first_switch.sentinel,
        ms_between(killed, first_switch.at),
        newest.epoch,
        newest.addr(),
        ms_between(first_switch.at, seen),
        newest.reported_by,
        promoted
            .map(|p| format!("{:+.1} ms", ms_between(first_switch.at, p)))
            .unwrap_or_else(|| "not observed".into()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_catches_a_switch_whose_events_were_missed() {
    // Arrange: subscribed everywhere, then every Sentinel kills our Pub/Sub connections, and the watcher
    // is told not to subscribe again for a minute, so only polls can see the switch.
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let old = lab.redis_addr(0);
    let opts = WatchOptions {
        resubscribe_delay: Duration::from_secs(60),
        ..WatchOptions::default()
    };
    let (watcher, mut rx) = Watcher::spawn_with(&lab.sentinel_config(), vec![master.clone()], opts);
    wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", all_up).await;
    let mut events = watcher.events();
    for i in 0..3 {
        let killed = lab
            .sentinel_command(i, &["CLIENT", "KILL", "TYPE", "pubsub"])
            .await
            .expect("CLIENT KILL");
        assert_eq!(
            killed,
            redis::Value::Int(1),
            "sentinel {i}: our pub/sub connection killed"
        );
    }
    wait_snapshot(
        &mut rx,
        Duration::from_secs(5),
        "pub/sub loss noticed",
        |s| s.reachable() == 3 && s.sentinels.iter().all(|x| !x.subscribed),
    )
    .await;

    // Act
    let killed = Instant::now();
    lab.kill_redis(0);
    let after = wait_snapshot(
        &mut rx,
        Duration::from_secs(30),
        "newest switches by polling",
        |s| newest_addr(s, &master).is_some_and(|a| a != old),
    )
    .await;

    // Assert
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "no event reached the watcher: the switch was found by polling"
    );
    let newest = after.newest(&master).unwrap();
    assert!(newest.epoch > 0);
    println!(
        "missed events: snapshot switched to {} (epoch {}) {:?} after the master was killed, by polls alone",
        newest.addr(),
        newest.epoch,
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sentinel_down_keeps_the_majority_without_flapping_and_a_switch_still_works() {
    // Arrange
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let old = lab.redis_addr(0);
    let mut cfg = lab.sentinel_config();
    cfg.poll_interval = Dur::from_millis(200);
    let (_watcher, mut rx) = Watcher::spawn(&cfg, vec![master.clone()]);
    wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", all_up).await;

    // Act
    lab.kill_sentinel(2);
    let down = wait_snapshot(
        &mut rx,
        Duration::from_secs(5),
        "sentinel 2 unreachable",
        |s| !s.sentinels[2].reachable,
    )
    .await;

    // Assert: majority, and across 10 polls not a single new snapshot: nothing flaps.
    assert!(down.has_majority());
    assert_eq!(down.reachable(), 2);
    let polls = 10;
    tokio::time::sleep(cfg.poll_interval.get() * polls).await;
    let later = rx.borrow().clone();
    assert_eq!(
        later.seq, down.seq,
        "no snapshot published across {polls} polls with one sentinel down: {later:#?}"
    );
    assert!(later.sentinels[2].error.is_some());

    lab.kill_redis(0);
    let after = wait_snapshot(&mut rx, Duration::from_secs(30), "newest switches", |s| {
        newest_addr(s, &master).is_some_and(|a| a != old)
    })
    .await;
    assert!(after.has_majority());
    assert!(after.newest(&master).unwrap().epoch > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_sentinels_are_unreachable_within_a_few_hundred_ms_and_recover() {
    // Arrange
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let (_watcher, mut rx) = Watcher::spawn(&lab.sentinel_config(), vec![master.clone()]);
    wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", all_up).await;

    // Act: two Sentinels freeze; their connections stall with no RST, as with silently dropped packets.
    lab.stop_sentinel(1).unwrap();
    lab.stop_sentinel(2).unwrap();
    let frozen = Instant::now();
    let minority = wait_snapshot(&mut rx, Duration::from_secs(5), "minority", |s| {
        s.reachable() == 1
    })
    .await;
    let detected = frozen.elapsed();

    // Assert
    assert!(!minority.has_majority());
    assert!(minority.sentinels[0].reachable);
    for i in [1, 2] {
        let err = minority.sentinels[i].error.as_deref().unwrap_or("");
        assert!(err.contains("timed out"), "sentinel {i}: {err}");
        assert!(minority.sentinels[i].masters.is_empty());
    }
    // The reachable one still answers; alone, its configuration counts only once corroborated (a second
    // Sentinel, or ROLE at the address), so until then it is pending.
    let view = minority.view(&master, std::time::Instant::now());
    assert!(
        view.newest.is_some() || view.pending.is_some(),
        "the reachable one still answers: {view:?}"
    );

    lab.cont_sentinel(1).unwrap();
    lab.cont_sentinel(2).unwrap();
    let thawed = Instant::now();
    let back = wait_snapshot(&mut rx, Duration::from_secs(10), "recovered", |s| {
        s.reachable() == 3
    })
    .await;
    assert!(back.has_majority());
    println!(
        "two frozen sentinels: minority seen after {detected:?} (timeout 250 ms, heartbeat 100 ms); \
         majority back {:?} after SIGCONT",
        thawed.elapsed()
    );
}

/// The shipped heartbeat still catches a silent stall on its own: polls are set 30 s apart (the first one is
/// not due before the test ends, the ticks being on one grid from the watcher's start) and the watcher does
/// not subscribe (any Sentinel event, e.g. a `+sentinel` while the three still discover each other, wakes a
/// query, which would time out first), so the only request that can time out is a heartbeat `PING`, and the
/// error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_heartbeat_a_frozen_sentinel_is_caught_by_a_ping_not_a_poll() {
    // Arrange: the default heartbeat and timeout, polls out of the way.
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let defaults: SentinelConfig =
        toml::from_str(&format!("addresses = {:?}", lab.sentinel_addrs())).unwrap();
    let cfg = SentinelConfig {
        poll_interval: Dur::from_secs(30),
        ..defaults
    };
    let no_events = WatchOptions {
        subscribe: false,
        ..WatchOptions::default()
    };
    let (_watcher, mut rx) = Watcher::spawn_with(&cfg, vec![master], no_events);
    wait_snapshot(&mut rx, Duration::from_secs(5), "all sentinels up", |s| {
        s.reachable() == 3
    })
    .await;

    // Act: one Sentinel freezes; its links stall without RST.
    lab.stop_sentinel(1).unwrap();
    let caught = wait_snapshot(
        &mut rx,
        Duration::from_secs(5),
        "sentinel 2 unreachable",
        |s| !s.sentinels[1].reachable,
    )
    .await;

    // Assert
    let err = caught.sentinels[1].error.as_deref().unwrap_or("");
    assert!(err.contains("ping timed out after"), "{err}");
    assert!(caught.has_majority(), "the other two still answer");
    lab.cont_sentinel(1).unwrap();
    wait_snapshot(&mut rx, Duration::from_secs(10), "recovered", |s| {
        s.reachable() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_only_the_watcher_rights_can_watch() {
    // Arrange
    let lab = RedisLab::start(LabSpec {
        sentinel_user: Some(LabUser::watcher("havip", "acl-pass-3f9")),
        ..LabSpec::default()
    })
    .await
    .expect("lab starts");
    let master = lab.master_name().to_owned();
    let cfg = lab.sentinel_config();
    assert_eq!(cfg.username.as_deref(), Some("havip"));

    // Act
    let (_watcher, mut rx) = Watcher::spawn(&cfg, vec![master.clone()]);
    let snap = wait_snapshot(
        &mut rx,
        Duration::from_secs(5),
        "all up as the acl user",
        all_up,
    )
    .await;

    // Assert
    assert_eq!(newest_addr(&snap, &master), Some(lab.redis_addr(0)));
    // The rules really are restrictive: the same user may not reset Sentinel.
    let addr = &lab.sentinel_addrs()[0];
    let mut conn = sentinel::connect(addr, &ConnectOptions::sentinel(&cfg))
        .await
        .unwrap();
    let denied: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
        .arg("RESET")
        .arg("*")
        .query_async(&mut conn)
        .await;
    let denied = denied.expect_err("SENTINEL RESET is denied");
    assert!(denied.to_string().contains("no permissions"), "{denied}");

    // A wrong password is an error that says so, without printing any password.
    let bad = SentinelConfig {
        password: Some(Secret::new("wrong-pass-77")),
        ..cfg.clone()
    };
    let err = sentinel::ping(addr, &bad).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        !err.contains("wrong-pass-77") && !err.contains("acl-pass-3f9"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_are_watched_over_tls_with_a_client_certificate() {
    // Arrange: every Redis and Sentinel serves TLS only and requires client certificates.
    let lab = RedisLab::start(LabSpec {
        tls: Some(LabTls { auth_clients: true }),
        ..LabSpec::default()
    })
    .await
    .expect("tls lab starts");
    let master = lab.master_name().to_owned();
    let cfg = lab.sentinel_config();
    assert!(cfg.tls.is_some());

    // Act
    let (_watcher, mut rx) = Watcher::spawn(&cfg, vec![master.clone()]);
    let snap = wait_snapshot(&mut rx, Duration::from_secs(5), "all up over tls", all_up).await;

    // Assert
    assert_eq!(newest_addr(&snap, &master), Some(lab.redis_addr(0)));
    let addr = &lab.sentinel_addrs()[0];
    let files = lab.tls_files().unwrap();

    let no_client_cert = SentinelConfig {
        tls: Some(TlsConfig {
            ca_file: Some(files.ca.clone()),
            cert_file: None,
            key_file: None,
            insecure: false,
        }),
        ..cfg.clone()
    };
    assert!(
        sentinel::query(addr, &no_client_cert, &master)
            .await
            .is_err(),
        "tls-auth-clients yes refuses a client without a certificate"
    );
    let plain = SentinelConfig {
        tls: None,
        ..cfg.clone()
    };
    assert!(sentinel::ping(addr, &plain).await.is_err(), "no plain TCP");

    let insecure = SentinelConfig {
        tls: Some(TlsConfig {
            ca_file: None,
            insecure: true,
            ..cfg.tls.clone().unwrap()
        }),
        ..cfg.clone()
    };
    sentinel::query(addr, &insecure, &master)
        .await
        .expect("insecure skips verification of the lab CA");

    let missing_ca = SentinelConfig {
        tls: Some(TlsConfig {
            ca_file: Some(lab.dir().join("no-such-ca.pem")),
            ..cfg.tls.clone().unwrap()
        }),
        ..cfg
    };
    let err = sentinel::ping(addr, &missing_ca)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-ca.pem"), "{err}");
}

// Single-threaded runtime: every watcher task runs on this thread, so its thread-local log capture sees them.
#[tokio::test]
async fn bad_sentinel_replies_and_events_are_logged_and_ignored() {
    // Arrange: three real Sentinels plus a fake one that only ever answers garbage.
    let (logs, _guard) = LogCapture::thread_debug();

    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("lab starts");
    let master = lab.master_name().to_owned();
    let old = lab.redis_addr(0);
    let fake_sentinel = FakeSentinel::start(Mode::Garbage).expect("start the fake sentinel");
    let fake = fake_sentinel.addr().to_owned();
    let mut cfg = lab.sentinel_config();
    cfg.addresses.push(fake.clone());
    cfg.poll_interval = Dur::from_millis(100);
    let (watcher, mut rx) = Watcher::spawn(&cfg, vec![master.clone()]);
    let events = record_events(watcher.events());

    // Every snapshot, as published: the fake never contributes a master, nothing bogus is ever newest.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut watch_all = watcher.snapshots();
    let (v2, m2) = (violations.clone(), master.clone());
    let checker = tokio::spawn(async move {
        while watch_all.changed().await.is_ok() {
            let s = watch_all.borrow_and_update().clone();
            if !s.sentinels[3].masters.is_empty() {
                v2.lock()
                    .unwrap()
                    .push(format!("fake has a master: {:?}", s.sentinels[3].masters));
            }
            if let Some(n) = s.newest(&m2)
                && n.ip.to_string() == "6.6.6.6"
            {
                v2.lock().unwrap().push(format!("bogus newest: {n:?}"));
            }
        }
    });

    // Act: let the fake cycle through every bad answer twice and publish plenty of garbage events.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake_sentinel.garbage_served() < 16 || fake_sentinel.events_published() < 14 {
        assert!(
            Instant::now() < deadline,
            "the fake was asked {} times and published {} events",
            fake_sentinel.garbage_served(),
            fake_sentinel.events_published()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snap = rx.borrow_and_update().clone();

    // Assert: the real Sentinels still work and name the real master.
    assert_eq!(newest_addr(&snap, &master), Some(old));
    assert!((0..3).all(|i| snap.sentinels[i].reachable), "{snap:#?}");
    assert!(snap.has_majority());
    assert!(
        events.lock().unwrap().iter().all(|e| e.sentinel != fake),
        "no garbage event is broadcast"
    );
    assert!(
        fake_sentinel.connections() >= 3,
        "non-RESP garbage made the watcher drop and rebuild the link"
    );
    let text = logs.text();
    for want in [
        "ignoring bad sentinel answer",
        "config-epoch",
        "not a non-negative integer",
        "not an IP address",
        "expected an array of field/value pairs or a map, got integer 42",
        "ERR fake failure",
        "ignoring malformed sentinel event",
        "payload is not utf-8",
        "expected 5 fields",
    ] {
        assert!(
            text.contains(want),
            "logs lack {want:?}:\n{}",
            last_lines(&text, 60)
        );
    }

    // A real failover still goes through, with the fake still babbling.
    lab.kill_redis(0);
    let after = wait_snapshot(&mut rx, Duration::from_secs(30), "newest switches", |s| {
        newest_addr(s, &master).is_some_and(|a| a != old)
    })
    .await;
    assert!(after.newest(&master).unwrap().epoch > 0);
    checker.abort();
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:#?}");
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
