//! `Claimer::claim`/`release` in-process against the real kernel: each test has its own network namespace
//! with a veth pair (`eth0` = the NIC, `peer0` = the wire), the fake cloud listening on 127.0.0.1 inside it,
//! the fake's GARP watcher on `peer0` (real GARPs move the holder, as on the VPC) and an ARP capture on
//! `peer0`. Addresses: 198.18.0.0/15. Needs root; fails naming what is missing otherwise.

mod migrate_support;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use havip_agent::claim::{ClaimOptions, ClaimOutcome, Claimer, Step, StepEvent};
use havip_agent::config::{AnnounceConfig, Dur, HavipConfig, InstanceType, Scope};
use havip_agent::net::{ArpCapture, ArpOp, CapturedFrame, Change, KernelNet, LocalNet};
use havip_testkit::fake::{Association, FakeCloud, GarpWatch, HavipSpec, watch_garp};
use migrate_support::*;
use tokio::time::Instant;

/// The node's own address on `eth0`: a VIP is bound only inside the subnet of an address already on the
/// interface (`net::check_vip_subnet`), as on a real VPC NIC.
const NODE_ADDR: &str = "198.18.0.200/24";

/// [`ns_with_nics`], with [`NODE_ADDR`] on `eth0`.
fn ns_with_node_addr(name: &str, nics: &[(&str, &str)]) -> havip_testkit::testbed::netns::Netns {
    let ns = ns_with_nics(name, nics);
    ns.add_addr("eth0", NODE_ADDR).unwrap();
    ns
}

/// The addresses on `eth0` besides [`NODE_ADDR`].
fn vips(ns: &havip_testkit::testbed::netns::Netns) -> Vec<String> {
    let mut a = ns.ipv4_addrs("eth0").unwrap();
    a.retain(|a| a != NODE_ADDR);
    a
}

/// An address announced after the act, as a barrier: every frame sent before it is captured before it.
const MARKER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

/// What a test needs inside the namespace.
struct Here {
    fake: FakeCloud,
    watch: Option<GarpWatch>,
    capture: ArpCapture,
    monitor: AddrMonitor,
    kernel: Arc<KernelNet>,
    mac: [u8; 6],
}

impl Here {
    /// Call inside the namespace. `watch`: run the fake's GARP watcher on `peer0` (without it the holder
    /// never moves, so no claim is ever confirmed).
    async fn new(watch: bool) -> Here {
        let fake = fake_here().await;
        let kernel = Arc::new(KernelNet::open("eth0").await.expect("open eth0"));
        let mac = kernel.mac();
        fake.add_instance("ins-a", mac);
        fake.add_instance("ins-b", [0x02, 0, 0, 0, 0, 0x0b]);
        fake.add_instance("ins-c", [0x02, 0, 0, 0, 0, 0x0c]);
        let watch = watch.then(|| watch_garp(fake.clone(), "peer0").expect("garp watcher"));
        Here {
            capture: ArpCapture::open("peer0").expect("arp capture on peer0"),
            monitor: AddrMonitor::start_here().expect("netlink address monitor"),
            fake,
            watch,
            kernel,
            mac,
        }
    }

    fn net(&self) -> Arc<dyn LocalNet> {
        self.kernel.clone()
    }

    async fn claim(&self, havip: &HavipConfig, steps: &Steps) -> ClaimOutcome {
        claimer(self.net(), "ins-a", &self.fake.endpoint())
            .claim(
                havip,
                ClaimOptions {
                    deadline: Instant::now() + Duration::from_secs(10),
                    known_in_range: false,
                    progress: Some(steps.progress()),
                },
            )
            .await
            .expect("the local part of the claim works")
    }

    /// Every ARP frame for `vip` captured from now until the marker announcement comes through.
    async fn frames_until_marker(&self, vip: Ipv4Addr) -> Vec<CapturedFrame> {
        self.kernel
            .announce_round(MARKER)
            .await
            .expect("announce marker");
        let mut out = Vec::new();
        let deadline = Instant::now() + patience();
        loop {
            let f = tokio::time::timeout_at(deadline, self.capture.recv())
                .await
                .expect("the marker frame was never captured")
                .expect("capture");
            if f.frame.sender_ip == MARKER {
                return out;
            }
            if f.frame.sender_ip == vip || f.frame.target_ip == vip {
                out.push(f);
            }
        }
    }
}

/// Collects claim steps.
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<Vec<StepEvent>>>);

impl Steps {
    fn progress(&self) -> havip_agent::claim::Progress {
        let me = self.0.clone();
        Arc::new(move |e: &StepEvent| me.lock().unwrap().push(e.clone()))
    }
    fn all(&self) -> Vec<Step> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.step.clone())
            .collect()
    }
    fn position(&self, f: impl Fn(&Step) -> bool) -> Option<usize> {
        self.all().iter().position(f)
    }
}

fn is_announce(s: &Step) -> bool {
    matches!(s, Step::Announced { .. })
}

fn check_garp(f: &CapturedFrame, mac: [u8; 6], vip: Ipv4Addr) {
    let a = &f.frame;
    assert_eq!(a.sender_ip, vip, "sender ip of {a:?}");
    assert_eq!(a.target_ip, vip, "target ip of {a:?}");
    assert_eq!(a.sender_mac, mac, "sender mac of {a:?}");
    assert_eq!(a.eth_src, mac, "ethernet source of {a:?}");
    assert_eq!(a.eth_dst, [0xff; 6], "broadcast destination of {a:?}");
}

#[test]
fn claim_binds_the_vip_once_and_sends_request_and_reply_garps_from_the_nic_mac() {
    let ns = ns_with_node_addr("clm-garp", &[("eth0", "peer0")]);
    let (out, steps, frames, mac, bound_events, holder) = ns.block_on(|| async {
        // Arrange: ins-a is in the drift range, ins-b holds the VIP.
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate("ins-a")
                .associate("ins-b")
                .holder("ins-b"),
        );
        let steps = Steps::default();
        // Act
        let out = h.claim(&havip_config(Scope::Inclusive), &steps).await;
        // Assert (collected here, checked below)
        let frames = h.frames_until_marker(vip_addr()).await;
        let holder = h.fake.havip(HAVIP_ID).unwrap().instance_id;
        (
            out,
            steps,
            frames,
            h.mac,
            {
                h.monitor.settle(&ns);
                h.monitor.events_for(vip_addr())
            },
            holder,
        )
    });
    assert!(!out.already_bound && !out.already_held, "{out:?}");
    assert_eq!(
        mac,
        ns.mac("eth0").unwrap(),
        "eth0's MAC as `ip` reports it"
    );
    assert!(
        out.confirmed,
        "the fake saw the GARP and moved the holder: {out:?}"
    );
    assert_eq!(holder.as_deref(), Some("ins-a"));
    assert_eq!(vips(&ns), vec![VIP.to_owned()], "bound once");
    assert_eq!(
        bound_events.iter().filter(|e| e.added).count(),
        1,
        "one RTM_NEWADDR for the vip: {bound_events:?}"
    );
    // Frames: whole rounds, each a request then a reply, all gratuitous from eth0's MAC.
    assert!(
        out.frames >= 2 && out.frames % 2 == 0,
        "frames sent: {}",
        out.frames
    );
    assert_eq!(
        frames.len(),
        out.frames as usize,
        "every frame the claim counted reached the wire, and no other: {frames:?}"
    );
    for (i, f) in frames.iter().enumerate() {
        check_garp(f, mac, vip_addr());
        let want = if i % 2 == 0 {
            ArpOp::Request
        } else {
            ArpOp::Reply
        };
        assert_eq!(
            f.frame.op, want,
            "frame {i}: the round is request then reply"
        );
    }
    // The first frame went out with the first round, before the cloud confirmed anything.
    let first_announce = steps.position(is_announce).expect("an announce step");
    let confirmed = steps
        .position(|s| *s == Step::Confirmed)
        .expect("a confirmed step");
    assert!(first_announce < confirmed, "steps: {:?}", steps.all());
    assert_eq!(
        steps.all()[0],
        Step::Bound { already: false },
        "bind is the first step"
    );
}

#[test]
fn claim_with_an_empty_drift_range_associates_before_the_first_garp() {
    let ns = ns_with_node_addr("clm-assoc", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        // Arrange: drift-range limiting on, nobody in range; ins-b holds.
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
        );
        let steps = Steps::default();

        // Act
        let out = h.claim(&havip_config(Scope::Inclusive), &steps).await;

        // Assert: one signed AssociateHaVipInstance for ins-a, before any GARP.
        assert!(out.associated && out.confirmed, "{out:?}");
        let writes = h.fake.write_requests();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let assoc = &writes[0];
        assert_eq!(assoc.action, "AssociateHaVipInstance");
        assert!(assoc.signature_valid, "{:?}", assoc.signature_error);
        let item = &assoc.body["HaVipAssociationSet"][0];
        assert_eq!(item["HaVipId"], HAVIP_ID);
        assert_eq!(item["InstanceId"], "ins-a");
        let seen = h.watch.as_ref().unwrap().seen();
        let first_garp = seen
            .iter()
            .find(|s| s.ip == vip_addr())
            .expect("the watcher saw the garp");
        assert!(
            assoc.at <= first_garp.at,
            "AssociateHaVipInstance arrived at {:?}, the first GARP at {:?}",
            assoc.at,
            first_garp.at
        );
        assert!(first_garp.moved, "in range by then, so it moved the holder");
        let associated = steps
            .position(|s| *s == Step::Associated)
            .expect("associated step");
        assert!(
            associated < steps.position(is_announce).expect("announce step"),
            "steps: {:?}",
            steps.all()
        );
        let snap = h.fake.havip(HAVIP_ID).unwrap();
        assert_eq!(snap.instance_id.as_deref(), Some("ins-a"));
        assert!(snap.in_range("ins-a"));
    });
}

#[test]
fn claim_with_the_instance_already_in_range_makes_no_write_call() {
    let ns = ns_with_node_addr("clm-inrange", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate("ins-a")
                .holder("ins-b"),
        );
        let out = h
            .claim(&havip_config(Scope::Inclusive), &Steps::default())
            .await;
        assert!(out.confirmed && !out.associated, "{out:?}");
        assert!(
            h.fake.write_requests().is_empty(),
            "{:?}",
            h.fake.write_requests()
        );
        let actions: Vec<String> = h.fake.requests().into_iter().map(|r| r.action).collect();
        assert!(actions.iter().all(|a| a == "DescribeHaVips"), "{actions:?}");
        assert_eq!(
            h.fake.havip(HAVIP_ID).unwrap().instance_id.as_deref(),
            Some("ins-a")
        );
    });
}

#[test]
fn claim_with_drift_range_limiting_off_makes_no_write_call() {
    let ns = ns_with_node_addr("clm-nocheck", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(false)
                .holder("ins-b"),
        );
        let out = h
            .claim(&havip_config(Scope::Inclusive), &Steps::default())
            .await;
        assert!(out.confirmed && !out.associated, "{out:?}");
        assert!(
            h.fake.write_requests().is_empty(),
            "{:?}",
            h.fake.write_requests()
        );
        assert_eq!(
            h.fake.havip(HAVIP_ID).unwrap().instance_id.as_deref(),
            Some("ins-a")
        );
    });
}

#[test]
fn repeated_claim_is_a_no_op_without_a_write_call_a_second_address_or_a_garp() {
    let ns = ns_with_node_addr("clm-repeat", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        // Arrange: a first, confirmed claim.
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
        );
        let havip = havip_config(Scope::Inclusive);
        let first = h.claim(&havip, &Steps::default()).await;
        assert!(first.confirmed && first.associated, "{first:?}");
        let _ = h.frames_until_marker(vip_addr()).await;
        h.fake.clear_requests();
        let moves = h.fake.moves().len();

        // Act
        let steps = Steps::default();
        let again = h.claim(&havip, &steps).await;

        // Assert
        assert!(again.already_bound && again.already_held, "{again:?}");
        assert_eq!(again.frames, 0, "{again:?}");
        assert!(
            h.fake.write_requests().is_empty(),
            "{:?}",
            h.fake.write_requests()
        );
        let frames = h.frames_until_marker(vip_addr()).await;
        assert!(frames.is_empty(), "the repeat sent GARPs: {frames:?}");
        assert!(
            !steps.all().iter().any(is_announce),
            "steps: {:?}",
            steps.all()
        );
        assert_eq!(h.fake.moves().len(), moves);
        h.monitor.settle(&ns);
        let added = h
            .monitor
            .events_for(vip_addr())
            .iter()
            .filter(|e| e.added)
            .count();
        assert_eq!(added, 1, "the kernel got the vip once over both claims");
        assert_eq!(vips(&ns), vec![VIP.to_owned()]);
    });
}

#[test]
fn release_removes_the_vip_without_an_api_call_and_a_second_release_is_already_done() {
    let ns = ns_with_node_addr("clm-release", &[("eth0", "peer0")]);
    ns.add_addr("eth0", "198.18.0.2/24").unwrap();
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
        );
        let c = claimer(h.net(), "ins-a", &h.fake.endpoint());
        let havip = havip_config(Scope::Inclusive);
        h.claim(&havip, &Steps::default()).await;
        assert!(h.kernel.is_bound(vip()).await.unwrap());
        let requests = h.fake.requests().len();

        assert_eq!(c.release(&havip).await.unwrap(), Change::Applied);
        assert_eq!(c.release(&havip).await.unwrap(), Change::AlreadyDone);

        assert!(!h.kernel.is_bound(vip()).await.unwrap());
        assert_eq!(h.fake.requests().len(), requests, "release needs no api");
        h.monitor.settle(&ns);
        let removed = h
            .monitor
            .events_for(vip_addr())
            .iter()
            .filter(|e| !e.added)
            .count();
        assert_eq!(removed, 1, "one RTM_DELADDR");
    });
    assert_eq!(
        vips(&ns),
        vec!["198.18.0.2/24".to_owned()],
        "only the vip went"
    );
}

#[test]
fn vip_whose_address_is_a_prefix_of_another_is_bound_and_released_exactly() {
    let ns = ns_with_node_addr("clm-prefix", &[("eth0", "peer0")]);
    // Case 1: 198.18.0.10 is there; claiming 198.18.0.1 must still bind .1, and release must leave .10.
    ns.add_addr("eth0", VIP_10).unwrap();
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
        );
        let havip = havip_config(Scope::Inclusive);
        let out = h.claim(&havip, &Steps::default()).await;
        assert!(!out.already_bound && out.confirmed, "{out:?}");
        claimer(h.net(), "ins-a", &h.fake.endpoint())
            .release(&havip)
            .await
            .unwrap();
    });
    assert_eq!(vips(&ns), vec![VIP_10.to_owned()]);

    // Case 2: the other way round: .1 is there, the VIP is .10.
    ns.del_addr("eth0", VIP_10).unwrap();
    ns.add_addr("eth0", VIP).unwrap();
    let vip10: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new("havip-mig00010", vip10)
                .check_associate(true)
                .holder("ins-b"),
        );
        let havip = HavipConfig {
            havip_id: "havip-mig00010".into(),
            vip: VIP_10.parse().unwrap(),
            ..havip_config(Scope::Inclusive)
        };
        let out = h.claim(&havip, &Steps::default()).await;
        assert!(!out.already_bound && out.confirmed, "{out:?}");
        assert_eq!(vips(&ns), vec![VIP.to_owned(), VIP_10.to_owned()]);
        let c = claimer(h.net(), "ins-a", &h.fake.endpoint());
        assert_eq!(c.release(&havip).await.unwrap(), Change::Applied);
        assert_eq!(c.release(&havip).await.unwrap(), Change::AlreadyDone);
    });
    assert_eq!(vips(&ns), vec![VIP.to_owned()]);
}

#[test]
fn exclusive_scope_removes_the_other_instances_after_a_confirmed_claim() {
    let ns = ns_with_node_addr("clm-excl", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        let h = Here::new(true).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate("ins-b")
                .associate("ins-c")
                .holder("ins-b"),
        );
        let steps = Steps::default();
        let out = h.claim(&havip_config(Scope::Exclusive), &steps).await;

        assert!(out.confirmed && out.associated, "{out:?}");
        let mut narrowed = out.narrowed.clone();
        narrowed.sort();
        assert_eq!(narrowed, ["ins-b", "ins-c"]);
        let snap = h.fake.havip(HAVIP_ID).unwrap();
        assert_eq!(snap.associations, vec![Association::cvm("ins-a")]);
        assert_eq!(snap.instance_id.as_deref(), Some("ins-a"));
        // Only after the move: every Disassociate came after the holder moved to ins-a.
        let moved_at = h.fake.moves().last().expect("a move").at;
        let disassoc: Vec<_> = h
            .fake
            .write_requests()
            .into_iter()
            .filter(|r| r.action == "DisassociateHaVipInstance")
            .collect();
        assert_eq!(disassoc.len(), 2, "{disassoc:?}");
        assert!(
            disassoc
                .iter()
                .all(|r| r.signature_valid && r.at >= moved_at)
        );
        let confirmed = steps.position(|s| *s == Step::Confirmed).unwrap();
        let narrowed_step = steps
            .position(|s| matches!(s, Step::Narrowed { .. }))
            .unwrap();
        assert!(confirmed < narrowed_step, "steps: {:?}", steps.all());
    });
}

#[test]
fn exclusive_scope_does_not_narrow_when_the_move_is_not_confirmed() {
    // Guards against fencing out the old holder while this node never became the holder.
    let ns = ns_with_node_addr("clm-exclno", &[("eth0", "peer0")]);
    ns.block_on(|| async {
        // No GARP watcher: the fake never sees the announcement, the holder stays ins-b.
        let h = Here::new(false).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate("ins-a")
                .associate("ins-b")
                .holder("ins-b"),
        );
        let out = claimer(h.net(), "ins-a", &h.fake.endpoint())
            .claim(
                &havip_config(Scope::Exclusive),
                ClaimOptions {
                    deadline: Instant::now() + Duration::from_secs(3),
                    known_in_range: false,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert!(!out.confirmed && out.narrowed.is_empty(), "{out:?}");
        assert!(
            h.fake.write_requests().is_empty(),
            "{:?}",
            h.fake.write_requests()
        );
        // The whole burst, then more rounds while the cloud did not confirm.
        assert!(
            out.frames > 2 * announce().burst,
            "it kept announcing: {out:?}"
        );
        assert!(h.kernel.is_bound(vip()).await.unwrap(), "and bound");
        assert_eq!(h.fake.havip(HAVIP_ID).unwrap().associations.len(), 2);
    });
}

/// A claimer like [`claimer`], announcing in bursts of `burst` rounds over `spread`.
fn claimer_with_burst(
    net: Arc<dyn LocalNet>,
    instance_id: &str,
    endpoint: &str,
    burst: u32,
    spread: Duration,
) -> Claimer {
    Claimer::new(
        Some(vpc_client(endpoint)),
        net,
        instance_id,
        InstanceType::Cvm,
        AnnounceConfig {
            burst,
            spread: Dur(spread),
            ..announce()
        },
        Duration::from_secs(2),
    )
}

fn is_for(vip: Ipv4Addr) -> impl Fn(&CapturedFrame) -> bool {
    move |f| f.frame.sender_ip == vip || f.frame.target_ip == vip
}

/// A claim that is aborted (the daemon drops a claim when Sentinel moves the master on, or at shutdown)
/// must stop announcing: a GARP burst that outlives it keeps pulling the VIP to a node that gave up the
/// claim, against the new master's announcements.
///
/// Fails while `Claimer::claim` runs its burst as a detached task (`spawn_burst` in src/claim.rs).
#[test]
fn aborted_claim_sends_no_further_garp() {
    const BURST: u32 = 10;
    const SPREAD: Duration = Duration::from_secs(2);
    /// Longer than what is left of the spread when the abort comes.
    const LISTEN: Duration = Duration::from_millis(2500);
    let ns = ns_with_node_addr("clm-abort", &[("eth0", "peer0")]);
    let (before, after, aborted) = ns.block_on(|| async {
        // No GARP watcher: the holder never moves, so the claim is never confirmed and keeps announcing.
        let h = Here::new(false).await;
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .associate("ins-a")
                .holder("ins-b"),
        );
        let c = claimer_with_burst(h.net(), "ins-a", &h.fake.endpoint(), BURST, SPREAD);
        let havip = havip_config(Scope::Inclusive);
        let claim = tokio::spawn(async move {
            c.claim(
                &havip,
                ClaimOptions {
                    deadline: Instant::now() + patience(),
                    known_in_range: false,
                    progress: None,
                },
            )
            .await
        });

        // The burst has begun once its first frame is on the wire.
        let first = h
            .capture
            .collect_until(1, Instant::now() + patience(), is_for(vip_addr()))
            .await
            .expect("capture");
        assert_eq!(first.len(), 1, "the claim sent no GARP");

        // Abort in the middle of the burst, and wait until the claim future is dropped.
        claim.abort();
        let joined = claim.await;
        let aborted = Instant::now();
        assert!(
            joined.as_ref().is_err_and(|e| e.is_cancelled()),
            "the claim ended by itself before the abort: {joined:?}"
        );

        // Whatever was sent before the abort is captured before the marker; everything after it was
        // sent after the abort.
        let before = h.frames_until_marker(vip_addr()).await;
        let keep = is_for(vip_addr());
        let mut after = Vec::new();
        while let Ok(f) = tokio::time::timeout_at(aborted + LISTEN, h.capture.recv()).await {
            let f = f.expect("capture");
            if keep(&f) {
                after.push(f);
            }
        }
        (before, after, aborted)
    });
    let late: Vec<String> = after
        .iter()
        .map(|f| {
            format!(
                "{:?} captured {:?} after the abort",
                f.frame.op,
                f.at.saturating_duration_since(aborted)
            )
        })
        .collect();
    assert!(
        after.is_empty(),
        "{} ARP frames for the VIP were sent after the claim was aborted and dropped \
         (the burst of {BURST} rounds over {SPREAD:?} went on): {late:#?}; \
         before the abort, after the first frame: {} frames",
        after.len(),
        before.len()
    );
}

#[test]
fn eni_mode_claim_associates_the_eni_and_confirms_by_network_interface_id() {
    // Regression: in ENI mode the claim compared the ENI id with `InstanceId` (the CVM), so it never
    // confirmed against a cloud that reports the holder as the real API does.
    let ns = ns_with_node_addr("clm-eni", &[("eth0", "peer0")]);
    let (out, snap) = ns.block_on(|| async {
        // Arrange: eth0 is a secondary ENI of ins-a (its primary ENI has another MAC); drift-range
        // limiting on, nobody in range, ins-b holds.
        let h = Here::new(true).await;
        h.fake.add_instance("ins-a", [0x02, 0, 0, 0, 0, 0x0a]);
        assert!(h.fake.add_eni("ins-a", "eni-a2000001", h.mac));
        h.fake.add_havip(
            HavipSpec::new(HAVIP_ID, vip_addr())
                .check_associate(true)
                .holder("ins-b"),
        );
        let claimer = Claimer::new(
            Some(vpc_client(&h.fake.endpoint())),
            h.net(),
            "eni-a2000001",
            InstanceType::Eni,
            announce(),
            Duration::from_secs(2),
        );

        // Act
        let out = claimer
            .claim(
                &havip_config(Scope::Inclusive),
                ClaimOptions {
                    deadline: Instant::now() + Duration::from_secs(10),
                    known_in_range: false,
                    progress: None,
                },
            )
            .await
            .expect("the local part of the claim works");
        (out, h.fake.havip(HAVIP_ID).unwrap())
    });

    // Assert: the ENI joined the range, its GARP moved the VIP to (ins-a, the ENI), and the claim saw it.
    assert!(out.associated, "{out:?}");
    assert!(out.confirmed, "confirmed by NetworkInterfaceId: {out:?}");
    assert_eq!(
        snap.instance_id.as_deref(),
        Some("ins-a"),
        "InstanceId is the CVM"
    );
    assert_eq!(snap.network_interface_id.as_deref(), Some("eni-a2000001"));
    assert_eq!(snap.associations, vec![Association::eni("eni-a2000001")]);
}
