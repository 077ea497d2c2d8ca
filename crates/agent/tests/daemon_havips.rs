//! One agent with two `[[havip]]` groups, against fake Sentinels (`testbed::fake_sentinel`, so each answer
//! is chosen by the test) and the fake cloud: a cloud that hangs on one HAVIP never holds up the other, and a Sentinel
//! that answers garbage is logged and ignored while the agent keeps working.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use havip_agent::claim::Step;
use havip_agent::config::VipCidr;
use havip_agent::daemon::AgentEventKind;
use havip_agent::net::{Change, LocalNet, NetError};
use havip_agent::status::Health;
use havip_testkit::fake::{FakeCloud, FakeVpcNet, Fault, FaultKind, HavipSpec};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, INSTANCE_ID, InprocAgent, InprocBuilder, Missed, SECRET_ID,
    SECRET_KEY,
};

const OTHER: &str = "198.18.0.3";
const FAST: (&str, &str, &str) = ("alpha", "havip-fast0001", "198.18.0.100");
const SLOW: (&str, &str, &str) = ("beta", "havip-slow0001", "198.18.0.101");
/// How long the events of interest may take on a loaded machine (a bound on waiting, not a speed claim).
const PATIENCE: Duration = Duration::from_secs(30);

/// Three fake Sentinels on 127.0.0.1 in `mode`; the one at index `garbage_at` (if any) answers garbage.
fn fake_sentinels(mode: Mode, garbage_at: Option<usize>) -> Vec<FakeSentinel> {
    (0..3)
        .map(|i| {
            let m = if garbage_at == Some(i) {
                Mode::Garbage
            } else {
                mode
            };
            FakeSentinel::start(m).unwrap()
        })
        .collect()
}

fn master(ip: &str, epoch: u64) -> Mode {
    Mode::Master {
        ip: ip.parse().unwrap(),
        epoch,
    }
}

/// One agent for both HAVIPs (both masters), this node at `ME`; the caller may turn more knobs.
fn agent<'a>(cloud: &'a FakeCloud, sentinels: &[FakeSentinel]) -> InprocBuilder<'a> {
    [FAST, SLOW].into_iter().fold(
        InprocAgent::builder(cloud, sentinels),
        |b, (master, id, vip)| b.havip(HavipEntry::new(master, id, vip.parse().unwrap())),
    )
}

fn start_cloud_havips(cloud: &FakeCloud) {
    cloud.add_key(SECRET_ID, SECRET_KEY);
    for (_, id, vip) in [FAST, SLOW] {
        cloud.add_havip(HavipSpec::new(id, vip.parse::<Ipv4Addr>().unwrap()).check_associate(true));
    }
}

/// Waits until both HAVIPs' claims are confirmed by the cloud.
async fn both_confirmed(node: &mut InprocAgent) {
    let mut confirmed = BTreeSet::new();
    node.next_event(
        PATIENCE,
        Missed::Skip,
        "confirmed claims of both HAVIPs",
        |e| {
            if matches!(
                e.kind,
                AgentEventKind::Claimed {
                    confirmed: true,
                    ..
                }
            ) {
                confirmed.insert(e.havip_id.clone());
            }
            (confirmed.len() == 2).then_some(())
        },
    )
    .await;
}

fn is_bound(node: &InprocAgent, vip: &str) -> bool {
    node.is_bound(vip.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_cloud_for_one_havip_never_delays_the_other() {
    let cloud = FakeCloud::start().await;
    start_cloud_havips(&cloud);
    // Every request naming the slow HAVIP is answered only after 30 s (the client gives up after 1 s).
    cloud.inject(Fault::always(FaultKind::Delay(Duration::from_secs(30))).for_havip(SLOW.1));
    let sentinels = fake_sentinels(master(ME, 1), None);

    let mut node = agent(&cloud, &sentinels).start().unwrap();

    // The fast HAVIP is claimed and confirmed by the cloud while the slow one's claim is still running
    // (it keeps announcing and asking until its 15 s deadline): had the HAVIPs shared one queue, the fast
    // one would wait for that.
    let (mut slow_bound, mut slow_finished) = (false, false);
    node.next_event(
        PATIENCE,
        Missed::Skip,
        "the fast HAVIP's confirmed claim",
        |e| {
            if e.havip_id == SLOW.1 {
                slow_bound |= matches!(e.kind, AgentEventKind::Claim(Step::Bound { .. }));
                slow_finished |= matches!(e.kind, AgentEventKind::Claimed { .. });
            }
            (e.havip_id == FAST.1
                && matches!(
                    e.kind,
                    AgentEventKind::Claimed {
                        confirmed: true,
                        ..
                    }
                ))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        cloud.havip(FAST.1).unwrap().instance_id.as_deref(),
        Some(INSTANCE_ID)
    );
    // ...while every request about the slow one is still held back.
    let slow_requests: Vec<_> = cloud
        .requests()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .collect();
    assert!(
        !slow_requests.is_empty(),
        "the slow HAVIP made no request, so this proves nothing"
    );
    assert!(
        slow_requests
            .iter()
            .all(|r| r.body.to_string().contains(SLOW.1)),
        "the fault hit another HAVIP: {slow_requests:?}"
    );
    assert!(
        !slow_finished,
        "the slow HAVIP's claim ended before the fast one was confirmed"
    );
    // The slow HAVIP is bound and announced locally all the same: a hanging cloud never stops that step.
    assert!(slow_bound, "the slow HAVIP was not bound locally");
    // (Its first GARP waits up to 300 ms for the drift-range check, which here never answers.)
    node.next_event(
        PATIENCE,
        Missed::Skip,
        "the slow HAVIP's first announce",
        |e| {
            (e.havip_id == SLOW.1
                && matches!(e.kind, AgentEventKind::Claim(Step::Announced { .. })))
            .then_some(())
        },
    )
    .await;
    assert!(
        !node
            .net
            .recording()
            .announcements(SLOW.2.parse().unwrap())
            .is_empty(),
        "the slow HAVIP was not announced"
    );
    assert!(is_bound(&node, FAST.2) && is_bound(&node, SLOW.2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_answering_garbage_is_ignored_and_the_agent_keeps_following_the_majority() {
    let cloud = FakeCloud::start().await;
    start_cloud_havips(&cloud);
    let sentinels = fake_sentinels(master(ME, 1), Some(0));

    let mut node = agent(&cloud, &sentinels).start().unwrap();

    // Two good Sentinels of three are a majority: both HAVIPs are claimed despite the third's garbage.
    both_confirmed(&mut node).await;
    // Let the garbage keep coming for a while (polls every second), then fail over away from this node:
    // the agent is still alive and follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sentinels[0].garbage_served() >= 3,
        "the broken Sentinel was hardly asked, so this proves little"
    );
    for s in &sentinels[1..] {
        s.set(master(OTHER, 2));
    }
    let mut released = BTreeSet::new();
    node.next_event(
        PATIENCE,
        Missed::Skip,
        "releases of both HAVIPs after the switch",
        |e| {
            if matches!(e.kind, AgentEventKind::Released { .. }) {
                released.insert(e.havip_id.clone());
            }
            (released.len() == 2).then_some(())
        },
    )
    .await;
    assert!(!is_bound(&node, FAST.2) && !is_bound(&node, SLOW.2));
}

/// The fake interface, except that `is_bound` for the FAST HAVIP's VIP never returns once `hang` is set: that
/// HAVIP's task is stuck on it while the other keeps going.
#[derive(Debug)]
struct HangingNet {
    inner: FakeVpcNet,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl LocalNet for HangingNet {
    fn interface(&self) -> &str {
        self.inner.interface()
    }
    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError> {
        if self.hang.load(std::sync::atomic::Ordering::Relaxed) && vip.addr.to_string() == FAST.2 {
            std::future::pending::<()>().await;
        }
        self.inner.is_bound(vip).await
    }
    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError> {
        self.inner.bind(vip).await
    }
    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError> {
        self.inner.unbind(vip).await
    }
    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError> {
        self.inner.announce_round(vip).await
    }
}

// Regression: all HAVIP tasks shared one heartbeat, so a hung task left /healthz (and the watchdog) green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_havip_task_that_hangs_turns_health_red_naming_it() {
    let cloud = FakeCloud::start().await;
    start_cloud_havips(&cloud);
    let sentinels = fake_sentinels(master(ME, 1), None);
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = Health::new(Duration::from_secs(3));
    let h = hang.clone();
    let mut node = agent(&cloud, &sentinels)
        .wrap_net(move |inner| Arc::new(HangingNet { inner, hang: h }))
        .health(health.clone())
        .start()
        .unwrap();
    both_confirmed(&mut node).await;
    assert!(health.is_healthy(), "{:?}", health.check());

    // The FAST task now blocks in its next drift check (every poll_interval = 1 s); the SLOW one goes on.
    hang.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let why = loop {
        if let Err(why) = health.check() {
            break why;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed green with hung havip tasks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains(&format!("havip {}", FAST.1)), "{why}");
    assert!(
        !why.contains(SLOW.1),
        "the other task still makes progress: {why}"
    );
    assert!(
        !why.contains("sentinel watch"),
        "the watchers still make progress: {why}"
    );
}
