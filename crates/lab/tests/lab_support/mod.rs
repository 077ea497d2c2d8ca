//! Shared by `lab_agent` and `lab_migrate`: the options of a test run, one lab at a time, and one more run
//! when Sentinel itself failed over twice.

use std::sync::{Mutex, MutexGuard};

use havip_lab::{Binaries, Method, RunOptions, RunOutcome, Scenario};
use havip_testkit::testbed::product_bin;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds off every other lab of this test binary while held: parallel labs on two cores distort Sentinel.
#[allow(dead_code)] // Not every test binary including this module needs it.
pub fn one_lab_at_a_time() -> MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn options() -> RunOptions {
    RunOptions {
        // Shorter windows than the benchmark's (10 s fault, 6 s of API faults): Sentinel has failed over
        // about 3 s into the fault, so 6 s still holds the fault through the whole failover.
        hold: std::time::Duration::from_secs(6),
        api_fault_for: std::time::Duration::from_secs(4),
        after_heal: std::time::Duration::from_secs(5),
        // Sentinel converts the old master back after 2 s instead of 8 (the benchmark keeps its defaults).
        quick_settle: true,
        binaries: Binaries {
            agent: Some(product_bin("havip-agent").expect("the agent binary")),
            migrate: Some(product_bin("migrate-havip").expect("the migrate-havip binary")),
        },
        ..RunOptions::default()
    }
}

pub fn run(method: Method, scenario: Scenario) -> RunOutcome {
    let _one = one_lab_at_a_time();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let once = || {
        let outcome = rt
            .block_on(havip_lab::run(method, scenario, &options()))
            .unwrap_or_else(|e| panic!("lab run {method} scenario {scenario} failed: {e:#}"));
        println!("{}", havip_lab::RunReport::header());
        println!("{}", outcome.report.row());
        outcome
    };
    let outcome = once();
    // Sentinel sometimes fails over a second time (it flags the master it just promoted down); that run
    // then tests Sentinel, not the VIP manager: say so and run the scenario once more.
    if outcome.report.sentinel_failovers > 1 {
        println!(
            "sentinel failed over {} times in this run; running {scenario} again\n{:#?}",
            outcome.report.sentinel_failovers, outcome.report.notes
        );
        return once();
    }
    outcome
}

/// What scenarios 1, 2, 4 and 5 demand of a VIP manager (`manager` names it in the messages).
pub fn assert_lossless_and_settled(o: &RunOutcome, manager: &str) {
    let r = &o.report;
    let d = || o.diagnostics();
    assert!(r.settled, "sentinel settled after the heal\n{}", d());
    assert!(
        r.new_master.is_some_and(|n| n != r.old_master),
        "sentinel failed over to another host\n{}",
        d()
    );
    assert!(r.acked > 100, "the client wrote through the VIP\n{}", d());
    assert_eq!(
        r.lost.counted(),
        0,
        "no acknowledged write lost before, during or after the fault (unsavable in the fault instant: {})\n{}",
        r.lost.unsavable,
        d()
    );
    assert!(
        r.vip_on_master,
        "the VIP sits on exactly the Sentinel master within 1 s of the heal\n{}",
        d()
    );
    assert!(
        r.cloud_holder_ok,
        "the cloud's HAVIP holder is the master's instance at the end\n{}",
        d()
    );
    assert!(r.api_requests > 0, "{manager} called the API\n{}", d());
    assert_eq!(
        r.bad_signatures,
        0,
        "every API request carries a valid TC3 signature\n{}",
        d()
    );
}
