//! Issue 13's scale run, lighter: 5 Redis masters on one host, their replicas on another, one Sentinel set
//! of three (quorum 2), one HAVIP per master, an agent on each Redis host, the fake cloud limiting every API
//! action to 20 requests/s. The master host's link is cut, then healed. Correctness is asserted (every
//! HAVIP ends on the new host in the cloud and bound there, the old host releases every VIP after the heal,
//! no claim fails, every HAVIP is confirmed by the cloud); speed and the GARP-before-switch ordering
//! are benchmarked (`cargo bench --bench scale`). Needs root and the lab's tools; a missing one fails the test
//! with its name.

use havip_lab::scale::{HavipTiming, ScaleOptions, ScaleReport, run_scale};
use havip_lab::{Binaries, Method};
use havip_testkit::testbed::product_bin;

#[test]
fn five_havips_follow_their_masters_when_the_master_host_loses_its_link() {
    let opts = ScaleOptions {
        method: Method::Agent,
        masters: 5,
        binaries: Binaries {
            agent: Some(product_bin("havip-agent").expect("the agent binary")),
            migrate: None,
        },
        settle_timeout: std::time::Duration::from_secs(30),
        heal: true,
        quick_settle: true,
        ..ScaleOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let o = rt
        .block_on(run_scale(&opts))
        .unwrap_or_else(|e| panic!("scale run failed: {e:#}"));
    let r = &o.report;
    println!(
        "{}\n{}",
        havip_lab::scale::table(std::slice::from_ref(r)),
        r.detail()
    );

    let not_moved = masters_where(r, |h| !h.on_new_host);
    assert!(
        not_moved.is_empty(),
        "not held by and bound on the new host: {not_moved:?}\n{}",
        o.diagnostics()
    );
    let not_released = masters_where(r, |h| h.released_on_old != Some(true));
    assert!(
        not_released.is_empty(),
        "still bound on the old host after the heal: {not_released:?}\n{}",
        o.diagnostics()
    );
    assert!(
        r.failed_claims.is_empty(),
        "claims reported failed ({} RequestLimitExceeded answers after the cut): {:#?}\n{}",
        r.throttled(),
        r.failed_claims,
        o.diagnostics()
    );
    let unconfirmed = masters_where(r, |h| h.confirm_ms.is_none());
    assert!(
        unconfirmed.is_empty(),
        "no DescribeHaVips after the move confirmed: {unconfirmed:?}\n{}",
        o.diagnostics()
    );
    // Not asserted: every first GARP before its master's +switch-master. The agent claims on the leader's
    // answer right after `+promoted-slave`; Sentinel announces `+switch-master` on its next timer tick, 0 to
    // 100 ms later, and when that gap is shorter than the agent's reaction (about 25 ms with 20 masters
    // failing over at once) the GARP follows the switch by a few ms. So that ordering holds for most
    // HAVIPs, not by construction for each; `cargo bench --bench scale` reports it.
    println!(
        "first GARPs after their +switch-master: {} of {}",
        r.garps_after_switch().len(),
        r.havips.len()
    );
    // Issue 13's symptom: concurrent per-HAVIP address dumps refused with EBUSY and logged, the claims then
    // waiting for the next tick. The agent reads local state once per change and retries a transient
    // refusal at once, so a failover of several HAVIPs logs no failed read.
    assert_eq!(
        r.netlink_errors,
        0,
        "the agents logged failed address reads\n{}",
        o.diagnostics()
    );
}

/// The masters of the HAVIPs for which `pred` holds.
fn masters_where(r: &ScaleReport, pred: impl Fn(&HavipTiming) -> bool) -> Vec<&str> {
    r.havips
        .iter()
        .filter(|h| pred(h))
        .map(|h| h.master.as_str())
        .collect()
}
