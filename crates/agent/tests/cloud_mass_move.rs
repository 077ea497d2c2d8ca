//! Ten HAVIPs through one failover, one agent, the fake cloud's per-action rate limit on (20/s, as the VPC
//! documents): every claim is confirmed, none fails or goes unconfirmed (what an operator would be alerted
//! about), and batching cuts the calls: concurrent polls share `DescribeHaVips` requests and the drift-range
//! changes share `AssociateHaVipInstance` requests. The agent is `testbed::inproc`'s.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::daemon::{AgentEvent, AgentEventKind};
use havip_testkit::fake::{FakeCloud, HavipSpec, RecordedRequest};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, INSTANCE_ID, InprocAgent, Missed, SECRET_ID, SECRET_KEY,
};

const OTHER: &str = "198.18.0.3";
const HAVIPS: usize = 10;
/// How long the events of interest may take on a loaded machine (a bound on waiting, not a speed claim).
const PATIENCE: Duration = Duration::from_secs(60);

fn master_name(i: usize) -> String {
    format!("m{i}")
}

fn havip_id(i: usize) -> String {
    format!("havip-mass{i:04}")
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100 + i as u8)
}

fn master(ip: &str, epoch: u64) -> Mode {
    Mode::Master {
        ip: ip.parse().unwrap(),
        epoch,
    }
}

/// One agent for the ten HAVIPs, this node at `ME`.
fn start_agent(cloud: &FakeCloud, sentinels: &[FakeSentinel]) -> InprocAgent {
    (0..HAVIPS)
        .fold(InprocAgent::builder(cloud, sentinels), |b, i| {
            b.havip(HavipEntry::new(master_name(i), havip_id(i), vip(i)))
        })
        .start()
        .expect("the agent starts")
}

/// Waits until `pick` has seen every HAVIP, collecting every event on the way (none may be missed).
async fn for_every_havip(
    node: &mut InprocAgent,
    what: &str,
    mut pick: impl FnMut(&AgentEvent) -> bool,
    seen_also: &mut Vec<AgentEvent>,
) {
    let mut done = BTreeSet::new();
    node.next_event(
        PATIENCE,
        Missed::Fail,
        &format!("{what} for every HAVIP"),
        |e| {
            if pick(e) {
                done.insert(e.havip_id.clone());
            }
            seen_also.push(e.clone());
            (done.len() == HAVIPS).then_some(())
        },
    )
    .await;
}

/// How many HAVIP ids the `DescribeHaVips` requests asked about in all (one per caller, had nothing
/// been batched).
fn ids_asked(requests: &[RecordedRequest]) -> usize {
    requests
        .iter()
        .map(|r| r.body["HaVipIds"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Ten HAVIPs held by `ins-b`, the fake's rate limit at `limit` per second per action, one agent on
/// standby, then every master moves to this node at once. Returns the fake and the agent's events from
/// the failover until every HAVIP's claim finished; the request log starts at the failover.
async fn mass_failover(limit: u32) -> (FakeCloud, Vec<AgentEvent>) {
    let cloud = FakeCloud::start().await;
    cloud.add_key(SECRET_ID, SECRET_KEY);
    cloud.add_instance("ins-b", [0x02, 0, 0x5e, 0x20, 0, 2]);
    for i in 0..HAVIPS {
        cloud.add_havip(
            HavipSpec::new(havip_id(i), vip(i))
                .check_associate(true)
                .associate("ins-b")
                .holder("ins-b"),
        );
    }
    cloud.set_rate_limit(Some(limit));
    let sentinels: Vec<FakeSentinel> = (0..3)
        .map(|_| FakeSentinel::start(master(OTHER, 1)).unwrap())
        .collect();
    let mut node = start_agent(&cloud, &sentinels);
    let mut events = Vec::new();
    for_every_havip(
        &mut node,
        "a standby decision",
        |e| matches!(e.kind, AgentEventKind::Decision { desired: false, .. }),
        &mut events,
    )
    .await;
    cloud.clear_requests();

    for s in &sentinels {
        s.set(master(ME, 2));
    }
    let mut events = Vec::new();
    for_every_havip(
        &mut node,
        "a finished claim",
        |e| {
            matches!(
                e.kind,
                AgentEventKind::Claimed { .. } | AgentEventKind::ClaimFailed { .. }
            )
        },
        &mut events,
    )
    .await;
    (cloud, events)
}

/// Every claim confirmed and every HAVIP on this node; nothing an operator would be alerted about (the
/// alerts ClaimFailed and CloudUnconfirmed come from exactly these events).
fn assert_all_moved_without_failures(cloud: &FakeCloud, events: &[AgentEvent]) {
    let failures: Vec<&AgentEvent> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                AgentEventKind::ClaimFailed { .. }
                    | AgentEventKind::Claimed {
                        confirmed: false,
                        ..
                    }
            )
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    for i in 0..HAVIPS {
        let h = cloud.havip(&havip_id(i)).unwrap();
        assert_eq!(h.instance_id.as_deref(), Some(INSTANCE_ID), "havip {i}");
    }
}

fn refused(cloud: &FakeCloud) -> usize {
    cloud
        .requests()
        .iter()
        .filter(|r| r.error_code.as_deref() == Some("RequestLimitExceeded"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_havips_move_in_one_failover_under_the_rate_limit_with_batched_calls() {
    // The documented 20/s, said explicitly so that a change of the fake's default cannot make this pass
    // vacuously.
    let (cloud, events) = mass_failover(20).await;

    assert_all_moved_without_failures(&cloud, &events);
    let requests = cloud.requests();
    let describes: Vec<RecordedRequest> = requests
        .iter()
        .filter(|r| r.action == "DescribeHaVips")
        .cloned()
        .collect();
    let asked = ids_asked(&describes);
    let associates = requests
        .iter()
        .filter(|r| r.action == "AssociateHaVipInstance")
        .count();
    eprintln!(
        "mass move: {} DescribeHaVips requests for {asked} HAVIP polls, {associates} AssociateHaVipInstance \
         requests for {HAVIPS} HAVIPs, {} RequestLimitExceeded answers",
        describes.len(),
        refused(&cloud)
    );
    // Each HAVIP polls at least once (its drift-range check), so unbatched there would be one request per
    // poll. Batched, concurrent polls share requests: while one is in flight the others queue and go out
    // together, so on average a request carries well over two polls.
    assert!(asked >= HAVIPS, "every HAVIP was polled: {asked}");
    assert!(
        describes.len() * 2 <= asked,
        "{} DescribeHaVips requests for {asked} polls: not batched",
        describes.len()
    );
    // The ten drift-range additions: the first goes alone, the nine queued behind it go out together
    // (a batch of at most ten). On a loaded machine a batch can time out after the fake applied it; its
    // retry then meets DuplicatedHaVipAssociations and falls back to one request per item, so the request
    // count is not a stable bound, but the size of the largest batch is.
    let largest_batch = requests
        .iter()
        .filter(|r| r.action == "AssociateHaVipInstance")
        .map(|r| r.body["HaVipAssociationSet"].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    assert!(
        (HAVIPS / 2..=10).contains(&largest_batch),
        "largest AssociateHaVipInstance batch: {largest_batch} items ({associates} requests)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_stricter_than_the_client_refuses_requests_but_no_claim_fails() {
    // 2/s per action, a tenth of what the client allows itself: the fake does answer
    // RequestLimitExceeded, and the retries within each claim's deadline absorb it.
    let (cloud, events) = mass_failover(2).await;

    assert_all_moved_without_failures(&cloud, &events);
    assert!(
        refused(&cloud) > 0,
        "the fake never refused a request, so this proves nothing"
    );
}
