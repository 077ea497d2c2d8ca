//! An EIP on a HAVIP, end to end against the fake cloud: the client's bind and its task poll (RUNNING →
//! SUCCESS, FAILED with the task's Output, the deadline), the fake's rules and codes, and the daemon, which
//! binds a missing EIP once and never touches it on failover.

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::cloud::{CloudError, EipBound, EipError, RetryPolicy, VpcClient};
use havip_agent::config::CloudConfig;
use havip_testkit::fake::{FakeCloud, HavipSpec};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, InprocAgent, SECRET_ID, SECRET_KEY, credentials,
};
use tokio::time::Instant;

const HAVIP: &str = "havip-eip00001";
const OTHER_HAVIP: &str = "havip-eip00002";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER_EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const ASSOCIATE: &str = "HaVipAssociateAddressIp";
const DISASSOCIATE: &str = "HaVipDisassociateAddressIp";
/// How long the events of interest may take on a loaded machine (a bound on waiting, not a speed claim).
const PATIENCE: Duration = Duration::from_secs(30);

async fn cloud() -> FakeCloud {
    let cloud = FakeCloud::start().await;
    cloud.add_key(SECRET_ID, SECRET_KEY);
    cloud.add_havip(HavipSpec::new(HAVIP, VIP));
    cloud.add_havip(HavipSpec::new(OTHER_HAVIP, Ipv4Addr::new(198, 18, 0, 101)));
    cloud.add_eip(EIP);
    cloud.add_eip(OTHER_EIP);
    cloud
}

fn client(cloud: &FakeCloud) -> VpcClient {
    havip_agent::tls::install_provider();
    let cfg: CloudConfig = toml::from_str(&format!(
        "region = \"ap-guangzhou\"\nendpoint = \"{}\"\ntimeout = \"1s\"\n",
        cloud.endpoint()
    ))
    .unwrap();
    VpcClient::new(&cfg, credentials(), havip_agent::clock::system())
        .unwrap()
        .with_retry_policy(RetryPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        })
}

fn in_secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

/// The API code of an error that wraps a cloud API error.
fn code(e: &EipError) -> Option<&str> {
    match e {
        EipError::Cloud(c) => c.code(),
        EipError::Refused { source, .. } => source.code(),
        _ => None,
    }
}

/// `(action, error code)` of every EIP request the fake answered, oldest first.
fn eip_calls(cloud: &FakeCloud) -> Vec<(String, Option<String>)> {
    cloud
        .requests()
        .into_iter()
        .filter(|r| r.action == ASSOCIATE || r.action == DISASSOCIATE)
        .map(|r| (r.action, r.error_code))
        .collect()
}

/// The EIP binds the fake accepted (`(action, None)`), oldest first; a refused one does not count.
fn accepted_binds(cloud: &FakeCloud) -> Vec<(String, Option<String>)> {
    eip_calls(cloud)
        .into_iter()
        .filter(|(action, code)| action == ASSOCIATE && code.is_none())
        .collect()
}

#[tokio::test]
async fn a_bind_polls_its_task_from_running_to_success_and_only_then_shows_address_ip() {
    let cloud = cloud().await;
    cloud.set_eip_task_duration(Duration::from_millis(1500));
    let c = client(&cloud);

    let bind = tokio::spawn({
        let c = c.clone();
        async move { c.associate_address_ip(HAVIP, EIP, in_secs(10)).await }
    });
    // While the task runs, DescribeHaVips shows no EIP yet.
    let deadline = Instant::now() + PATIENCE;
    while !cloud.requests().iter().any(|r| r.action == ASSOCIATE) {
        assert!(Instant::now() < deadline, "the bind was never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = c.describe_havip(HAVIP, in_secs(5)).await.unwrap();
    assert_eq!(during.address_ip, None, "AddressIp before the task ended");

    let bound = bind.await.unwrap().expect("bind succeeds");
    let sent = cloud
        .requests()
        .into_iter()
        .find(|r| r.action == ASSOCIATE)
        .unwrap();
    assert_eq!(
        bound,
        EipBound::Bound {
            task_id: sent.request_id.clone()
        },
        "the task id is the call's RequestId"
    );
    assert_eq!(sent.body["AddressIp"], "203.0.113.10");
    let polls: Vec<_> = cloud
        .requests()
        .into_iter()
        .filter(|r| r.action == "DescribeVpcTaskResult")
        .collect();
    assert!(
        polls.len() >= 2
            && polls
                .iter()
                .all(|p| p.body["TaskId"] == sent.request_id.as_str()),
        "polled the task while it ran: {polls:?}"
    );
    let after = c.describe_havip(HAVIP, in_secs(5)).await.unwrap();
    assert_eq!(after.address_ip.as_deref(), Some("203.0.113.10"));
    assert_eq!(cloud.havip_eip(HAVIP), Some(EIP));
}

#[tokio::test]
async fn a_failed_task_is_an_error_naming_the_task_and_its_output_and_binds_nothing() {
    let cloud = cloud().await;
    cloud.fail_next_eip_tasks(1, "EIP quota of the HAVIP exceeded");
    let c = client(&cloud);

    let e = c
        .associate_address_ip(HAVIP, EIP, in_secs(10))
        .await
        .unwrap_err();
    let task_id = cloud
        .requests()
        .into_iter()
        .find(|r| r.action == ASSOCIATE)
        .unwrap()
        .request_id;
    match &e {
        EipError::TaskFailed {
            task_id: t, output, ..
        } => {
            assert_eq!(t, &task_id);
            assert_eq!(output.as_deref(), Some("EIP quota of the HAVIP exceeded"));
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(&task_id) && text.contains("EIP quota of the HAVIP exceeded"),
        "{text}"
    );
    assert_eq!(cloud.havip_eip(HAVIP), None);
    // The fault is used up: the next bind works.
    c.associate_address_ip(HAVIP, EIP, in_secs(10))
        .await
        .unwrap();
    assert_eq!(cloud.havip_eip(HAVIP), Some(EIP));
}

#[tokio::test]
async fn a_task_still_running_at_the_deadline_is_unfinished_not_success() {
    let cloud = cloud().await;
    cloud.set_eip_task_duration(Duration::from_secs(30));
    let c = client(&cloud);

    let e = c
        .associate_address_ip(HAVIP, EIP, in_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EipError::TaskUnfinished { status, .. } if status == "RUNNING"),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(cloud.havip_eip(HAVIP), None);
}

#[tokio::test]
async fn a_task_id_that_never_existed_is_an_error_never_success() {
    let cloud = cloud().await;
    let c = client(&cloud);
    let e = c
        .describe_task_result("4b1b0b4e-0000-0000-0000-000000000000", in_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CloudError::Api { code, .. } if code.starts_with("ResourceNotFound")),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_fake_enforces_the_bind_rules_with_the_documented_codes() {
    let cloud = cloud().await;
    let c = client(&cloud);

    // An EIP the account does not have.
    let e = c
        .associate_address_ip(HAVIP, Ipv4Addr::new(203, 0, 113, 77), in_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        Some("InvalidParameterValue.AddressIpNotFound"),
        "{e:?}"
    );
    assert!(!e.is_retryable());

    // A second operation on the HAVIP while its task runs.
    cloud.set_eip_task_duration(Duration::from_secs(5));
    let bind = tokio::spawn({
        let c = c.clone();
        async move { c.associate_address_ip(HAVIP, EIP, in_secs(20)).await }
    });
    let deadline = Instant::now() + PATIENCE;
    while !cloud
        .requests()
        .iter()
        .any(|r| r.action == ASSOCIATE && r.error_code.is_none())
    {
        assert!(Instant::now() < deadline, "the bind was never accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = c
        .disassociate_address_ip(HAVIP, Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        Some("UnsupportedOperation.MutexOperationTaskRunning"),
        "{e:?}"
    );
    cloud.set_eip_task_duration(Duration::from_millis(100));
    bind.await.unwrap().unwrap();

    // The EIP is on HAVIP now: binding it to another HAVIP is refused, and nothing is changed there.
    let e = c
        .associate_address_ip(OTHER_HAVIP, EIP, in_secs(5))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("UnsupportedOperation.BindEIP"), "{e:?}");
    assert!(matches!(e, EipError::Refused { .. }), "{e:?}");
    assert_eq!(cloud.havip_eip(OTHER_HAVIP), None);

    // HAVIP already has an EIP: another one is never put in its place.
    let e = c
        .associate_address_ip(HAVIP, OTHER_EIP, in_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EipError::OtherEip { bound, .. } if bound == "203.0.113.10"),
        "{e:?}"
    );
    assert_eq!(cloud.havip_eip(HAVIP), Some(EIP));

    // Unbinding works once, then there is nothing to unbind.
    c.disassociate_address_ip(HAVIP, in_secs(5)).await.unwrap();
    assert_eq!(cloud.havip_eip(HAVIP), None);
    let e = c
        .disassociate_address_ip(HAVIP, in_secs(5))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("UnsupportedOperation.UnbindEIP"), "{e:?}");
}

#[tokio::test]
async fn binding_an_eip_already_on_the_havip_counts_as_done_and_changes_nothing() {
    let cloud = cloud().await;
    cloud.set_havip_eip(HAVIP, EIP);
    let c = client(&cloud);

    // Straight to the API: BindEIP, then a re-read shows it is ours.
    let got = c
        .associate_address_ip(HAVIP, EIP, in_secs(5))
        .await
        .unwrap();
    assert_eq!(got, EipBound::AlreadyBound);
    // Through the read-first path: no call at all.
    cloud.clear_requests();
    let got = c.ensure_address_ip(HAVIP, EIP, in_secs(5)).await.unwrap();
    assert_eq!(got, EipBound::AlreadyBound);
    assert!(eip_calls(&cloud).is_empty(), "{:?}", eip_calls(&cloud));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_binding_at_once_both_end_done_with_one_bind() {
    let cloud = cloud().await;
    cloud.set_eip_task_duration(Duration::from_millis(500));
    let (a, b) = (client(&cloud), client(&cloud));

    let (ra, rb) = tokio::join!(
        a.ensure_address_ip(HAVIP, EIP, in_secs(10)),
        b.ensure_address_ip(HAVIP, EIP, in_secs(10))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let bound = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, EipBound::Bound { .. }))
        .count();
    assert_eq!(bound, 1, "exactly one bound it: {ra:?} {rb:?}");
    assert_eq!(accepted_binds(&cloud).len(), 1, "{:?}", eip_calls(&cloud));
    assert_eq!(cloud.havip_eip(HAVIP), Some(EIP));
}

// ----- the daemon -----

const PEER: &str = "198.18.0.3";

fn master(ip: &str, epoch: u64) -> Mode {
    Mode::Master {
        ip: ip.parse().unwrap(),
        epoch,
    }
}

/// Three fake Sentinels naming `ip` the master at epoch 1.
fn sentinels_naming(ip: &str) -> Vec<FakeSentinel> {
    (0..3)
        .map(|_| FakeSentinel::start(master(ip, 1)).unwrap())
        .collect()
}

/// An agent for `instance` at `address` with `eip` configured on HAVIP, against `sentinels` and `cloud`;
/// `alert_url` receives its alerts (generic JSON).
fn start_node(
    cloud: &FakeCloud,
    sentinels: &[FakeSentinel],
    instance: &str,
    address: &str,
    mac: [u8; 6],
    alert_url: Option<&str>,
) -> InprocAgent {
    let alert = alert_url
        .map(|u| format!("\n[[alert]]\nurl = \"{u}\"\nformat = \"json\"\n"))
        .unwrap_or_default();
    InprocAgent::builder(cloud, sentinels)
        .node(instance, address.parse().unwrap(), mac)
        .havip(HavipEntry::new("mymaster", HAVIP, VIP).with_eip(EIP))
        .extra_toml(&format!("[agent]\nverify_interval = \"1s\"\n{alert}"))
        .start()
        .unwrap()
}

/// Polls `f` every 50 ms until it holds, failing with `what` after [`PATIENCE`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many `DescribeHaVips` requests the fake has answered: the agents' cloud reads, each a chance to act
/// on the EIP.
fn reads(cloud: &FakeCloud) -> usize {
    cloud
        .requests()
        .iter()
        .filter(|r| r.action == "DescribeHaVips")
        .count()
}

fn eip_bound_metric(node: &InprocAgent) -> Option<f64> {
    node.metrics
        .value("havip_agent_eip_bound", &[("havip", HAVIP)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_bind_a_missing_eip_once_and_never_touch_it_on_failover() {
    let cloud = cloud().await;
    let sentinels = sentinels_naming(ME);
    // Both nodes start with the EIP missing: both may try, one binds, the other finds it done.
    let a = start_node(
        &cloud,
        &sentinels,
        "ins-a",
        ME,
        [2, 0, 0x5e, 0, 0, 0xa],
        None,
    );
    let b = start_node(
        &cloud,
        &sentinels,
        "ins-b",
        PEER,
        [2, 0, 0x5e, 0, 0, 0xb],
        None,
    );

    until("the eip bound and the holder on ins-a", || {
        cloud.havip_eip(HAVIP) == Some(EIP)
            && cloud.havip(HAVIP).unwrap().instance_id.as_deref() == Some("ins-a")
    })
    .await;
    for node in [&a, &b] {
        until("both agents to report the eip bound", || {
            eip_bound_metric(node) == Some(1.0)
                && node.status.snapshot().havips[0].eip_bound == Some(true)
        })
        .await;
    }
    let s = a.status.snapshot().havips[0].clone();
    assert_eq!(s.eip.as_deref(), Some("203.0.113.10"));
    assert_eq!(s.cloud_eip.as_deref(), Some("203.0.113.10"));
    assert_eq!(accepted_binds(&cloud).len(), 1, "{:?}", eip_calls(&cloud));

    // Failover to ins-b: the HAVIP moves, the EIP goes with it, and no agent calls an EIP action.
    let before = eip_calls(&cloud).len();
    for s in &sentinels {
        s.set(master(PEER, 2));
    }
    until("the holder on ins-b", || {
        cloud.havip(HAVIP).unwrap().instance_id.as_deref() == Some("ins-b")
    })
    .await;
    // The new holder re-reads the HAVIP every second (verify_interval): let it see the moved HAVIP a few
    // times, each a chance to act on the EIP.
    let seen = reads(&cloud);
    until("a few cloud reads after the failover", || {
        reads(&cloud) >= seen + 3
    })
    .await;
    let calls = eip_calls(&cloud);
    assert_eq!(calls.len(), before, "an eip action on failover: {calls:?}");
    assert!(
        !calls.iter().any(|(action, _)| action == DISASSOCIATE),
        "{calls:?}"
    );
    assert_eq!(cloud.havip_eip(HAVIP), Some(EIP));
    assert_eq!(eip_bound_metric(&b), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_retries_a_failed_bind_task_until_the_eip_is_bound() {
    let cloud = cloud().await;
    cloud.fail_next_eip_tasks(1, "internal error while binding");
    let sentinels = sentinels_naming(ME);
    let a = start_node(
        &cloud,
        &sentinels,
        "ins-a",
        ME,
        [2, 0, 0x5e, 0, 1, 0xa],
        None,
    );

    until("the eip bound after a retry", || {
        cloud.havip_eip(HAVIP) == Some(EIP)
    })
    .await;
    until("the agent to report it", || {
        eip_bound_metric(&a) == Some(1.0)
    })
    .await;
    let accepted = accepted_binds(&cloud);
    assert_eq!(
        accepted.len(),
        2,
        "one failed task, one retry: {accepted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_never_replaces_another_eip_and_alerts_once() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let cloud = cloud().await;
    cloud.set_havip_eip(HAVIP, OTHER_EIP);
    let sentinels = sentinels_naming(ME);
    let a = start_node(
        &cloud,
        &sentinels,
        "ins-a",
        ME,
        [2, 0, 0x5e, 0, 2, 0xa],
        Some(&hook.uri()),
    );

    until("the agent to report the eip not bound", || {
        eip_bound_metric(&a) == Some(0.0)
    })
    .await;
    let alerts = || async {
        hook.received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter(|v| v["event"] == "eip_mismatch")
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + PATIENCE;
    while alerts().await.is_empty() {
        assert!(Instant::now() < deadline, "no eip_mismatch alert");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = alerts().await;
    assert!(
        got[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("203.0.113.99") && m.contains("203.0.113.10")),
        "{got:?}"
    );
    // A few cloud reads later (the holder re-reads every second): still one alert, still no EIP call, the
    // other EIP untouched.
    let seen = reads(&cloud);
    until("a few cloud reads after the alert", || {
        reads(&cloud) >= seen + 3
    })
    .await;
    assert_eq!(alerts().await.len(), 1);
    assert!(eip_calls(&cloud).is_empty(), "{:?}", eip_calls(&cloud));
    assert_eq!(cloud.havip_eip(HAVIP), Some(OTHER_EIP));
    let s = a.status.snapshot().havips[0].clone();
    assert_eq!(
        (s.eip_bound, s.cloud_eip.as_deref()),
        (Some(false), Some("203.0.113.99"))
    );
}
