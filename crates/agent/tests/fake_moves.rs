//! The fake VPC's move timing: the platform's delay between an accepted gratuitous ARP and the HAVIP move,
//! pending moves replaced or kept, subscribers hearing of every move in order, and the per-NIC GARP rate
//! limit. Waits are bounded (a channel with a deadline); the only times asserted are lower bounds the fake
//! guarantees (a move is never applied before it is due).

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use havip_testkit::fake::{
    DEFAULT_GARP_RATE_LIMIT, FakeCloud, GarpOutcome, HavipSpec, HolderMove, eni_id_for,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const HAVIP: &str = "havip-00000001";
const HAVIP2: &str = "havip-00000002";
/// Long enough that nothing in a test stalls past it between a GARP and the next check.
const DELAY: Duration = Duration::from_millis(1500);
/// How long a test waits for a move before failing.
const WAIT: Duration = Duration::from_secs(20);

/// A fake with instances A, B, C (all in range of both HAVIPs, A holding both) and a channel of moves.
async fn fake() -> (FakeCloud, mpsc::Receiver<HolderMove>) {
    let fake = FakeCloud::start().await;
    for (id, mac) in [
        ("ins-aaaaaaaa", MAC_A),
        ("ins-bbbbbbbb", MAC_B),
        ("ins-cccccccc", MAC_C),
    ] {
        fake.add_instance(id, mac);
    }
    for (id, vip) in [(HAVIP, VIP), (HAVIP2, VIP2)] {
        fake.add_havip(
            HavipSpec::new(id, vip)
                .check_associate(true)
                .associate("ins-aaaaaaaa")
                .associate("ins-bbbbbbbb")
                .associate("ins-cccccccc")
                .holder("ins-aaaaaaaa"),
        );
    }
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    fake.on_move(move |mv| {
        let _ = tx.lock().unwrap().send(mv.clone());
    });
    (fake, rx)
}

fn holder(fake: &FakeCloud, id: &str) -> Option<String> {
    fake.havip(id).and_then(|h| h.instance_id)
}

fn next_move(rx: &mpsc::Receiver<HolderMove>) -> HolderMove {
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("no holder move within {WAIT:?}: {e}"))
}

#[tokio::test]
async fn with_a_move_delay_the_holder_moves_only_when_the_delay_is_over() {
    let (fake, moves) = fake().await;
    fake.set_move_delay(DELAY).unwrap();

    let sent = SystemTime::now();
    let outcome = fake.garp(MAC_B, VIP);
    let before = fake.havip(HAVIP).unwrap();
    let checked = SystemTime::now();
    let mv = next_move(&moves);

    let GarpOutcome::MoveScheduled { from, to, due, .. } = &outcome else {
        panic!("an accepted GARP schedules the move: {outcome:?}");
    };
    assert_eq!(from.as_deref(), Some("ins-aaaaaaaa"));
    assert_eq!(to, "ins-bbbbbbbb");
    assert!(*due >= sent + DELAY, "due {due:?} is the GARP + the delay");
    assert!(
        checked < *due,
        "precondition: checked before the move was due"
    );
    assert_eq!(
        before.instance_id.as_deref(),
        Some("ins-aaaaaaaa"),
        "describe shows the old holder until the move is applied"
    );
    assert_eq!(before.flushed_time, None);
    assert!(mv.at >= *due, "applied at {:?}, due {due:?}", mv.at);
    assert_eq!(
        (mv.from.as_deref(), mv.to.as_str()),
        (Some("ins-aaaaaaaa"), "ins-bbbbbbbb")
    );
    let after = fake.havip(HAVIP).unwrap();
    assert_eq!(after.instance_id.as_deref(), Some("ins-bbbbbbbb"));
    assert_eq!(after.network_interface_id, Some(eni_id_for("ins-bbbbbbbb")));
    assert!(after.flushed_time.is_some());
    assert_eq!(fake.moves(), vec![mv]);
}

#[tokio::test]
async fn a_repeat_keeps_the_pending_timer_and_another_instance_replaces_the_pending_move() {
    let (fake, moves) = fake().await;
    fake.set_move_delay(DELAY).unwrap();

    let first = fake.garp(MAC_B, VIP);
    let repeat = fake.garp(MAC_B, VIP);
    let other = fake.garp(MAC_C, VIP);
    let mv = next_move(&moves);

    let GarpOutcome::MoveScheduled { due, .. } = first else {
        panic!("scheduled: {first:?}");
    };
    assert_eq!(
        repeat,
        GarpOutcome::MovePending {
            havip_id: HAVIP.into(),
            to: "ins-bbbbbbbb".into(),
            due
        },
        "a repeat from the same sender does not restart the timer"
    );
    let GarpOutcome::MoveScheduled { to, due: due_c, .. } = other else {
        panic!("another instance's GARP schedules a new move: {other:?}");
    };
    assert_eq!(to, "ins-cccccccc");
    assert!(due_c >= due);
    assert_eq!(
        mv.to, "ins-cccccccc",
        "the later GARP replaced the pending move"
    );
    assert!(mv.at >= due_c);
    assert_eq!(fake.moves().len(), 1, "B never held it: {:?}", fake.moves());
}

#[tokio::test]
async fn the_holders_own_garp_drops_a_pending_move_away_from_it() {
    let (fake, moves) = fake().await;
    fake.set_move_delay(DELAY).unwrap();

    let scheduled = fake.garp(MAC_B, VIP);
    let holder_again = fake.garp(MAC_A, VIP);
    // A later move of another HAVIP: the move thread applies due moves in order, so had B's move stayed
    // pending it would come first.
    let later = fake.garp(MAC_C, VIP2);
    let mv = next_move(&moves);

    assert!(
        matches!(scheduled, GarpOutcome::MoveScheduled { .. }),
        "{scheduled:?}"
    );
    assert!(
        matches!(holder_again, GarpOutcome::AlreadyHolder { .. }),
        "{holder_again:?}"
    );
    assert!(
        matches!(later, GarpOutcome::MoveScheduled { .. }),
        "{later:?}"
    );
    assert_eq!(
        (mv.havip_id.as_str(), mv.to.as_str()),
        (HAVIP2, "ins-cccccccc")
    );
    assert_eq!(holder(&fake, HAVIP).as_deref(), Some("ins-aaaaaaaa"));
    assert_eq!(fake.moves(), vec![mv]);
}

#[tokio::test]
async fn without_a_delay_subscribers_hear_of_a_move_before_the_garp_returns() {
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_instance("ins-bbbbbbbb", MAC_B);
    fake.add_havip(
        HavipSpec::new(HAVIP, VIP)
            .check_associate(false)
            .holder("ins-aaaaaaaa"),
    );
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    fake.on_move(move |mv| h.lock().unwrap().push(mv.clone()));

    let b = fake.garp(MAC_B, VIP);
    let heard_after_b = heard.lock().unwrap().clone();
    let a = fake.garp(MAC_A, VIP);

    assert!(b.moved() && a.moved(), "{b:?} {a:?}");
    assert_eq!(heard_after_b.len(), 1);
    assert_eq!(*heard.lock().unwrap(), fake.moves(), "every move, in order");
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.to.as_str())
            .collect::<Vec<_>>(),
        ["ins-bbbbbbbb", "ins-aaaaaaaa"]
    );
}

#[tokio::test]
async fn frames_past_the_per_nic_rate_limit_are_dropped_counted_and_never_move_the_havip() {
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_instance("ins-bbbbbbbb", MAC_B);
    fake.add_havip(
        HavipSpec::new(HAVIP, VIP)
            .check_associate(false)
            .holder("ins-aaaaaaaa"),
    );
    fake.add_havip(
        HavipSpec::new(HAVIP2, VIP2)
            .check_associate(false)
            .holder("ins-aaaaaaaa"),
    );
    // The limit reads tokio's clock: paused, the test moves time itself.
    tokio::time::pause();
    fake.set_garp_rate_limit(Some(3));

    let first_three: Vec<GarpOutcome> = (0..3).map(|_| fake.garp(MAC_B, VIP)).collect();
    let fourth = fake.garp(MAC_B, VIP2);
    let other_nic = fake.garp(MAC_A, VIP);
    tokio::time::advance(Duration::from_secs(1)).await;
    let a_second_later = fake.garp(MAC_B, VIP2);

    assert!(first_three[0].moved(), "{first_three:?}");
    assert_eq!(
        fourth,
        GarpOutcome::RateLimited,
        "the 4th frame in a second from B"
    );
    assert_eq!(fake.garps_rate_limited(), 1);
    assert!(
        other_nic.moved(),
        "the limit is per sender MAC: {other_nic:?}"
    );
    assert!(a_second_later.moved(), "{a_second_later:?}");
    assert_eq!(holder(&fake, HAVIP2).as_deref(), Some("ins-bbbbbbbb"));
}

#[tokio::test]
async fn the_default_rate_limit_lets_a_burst_for_five_havips_through_and_can_be_turned_off() {
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-bbbbbbbb", MAC_B);
    fake.add_havip(HavipSpec::new(HAVIP, VIP).check_associate(false));
    tokio::time::pause();
    let limit = DEFAULT_GARP_RATE_LIMIT.expect("a default limit");

    let within: Vec<GarpOutcome> = (0..limit).map(|_| fake.garp(MAC_B, VIP)).collect();
    let past = fake.garp(MAC_B, VIP);
    fake.set_garp_rate_limit(None);
    let unlimited = (0..1000).all(|_| fake.garp(MAC_B, VIP) != GarpOutcome::RateLimited);

    assert!(
        limit >= 40,
        "5 HAVIPs x the agent's burst (4 rounds of 2 frames) fit"
    );
    assert!(within.iter().all(|o| *o != GarpOutcome::RateLimited));
    assert_eq!(past, GarpOutcome::RateLimited);
    assert!(unlimited);
    assert_eq!(fake.garps_rate_limited(), 1);
}
