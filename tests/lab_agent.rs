//! The failover lab with the agent (`havip-agent run` on every host): real Redis + Sentinel in network
//! namespaces, a client writing through the VIP, the fake cloud moving the HAVIP on GARP. One run per
//! scenario; correctness is asserted (no acknowledged write lost, the VIP on exactly the master after the
//! heal, every API request signed correctly), speed is benchmarked (`cargo bench --bench lab`), not asserted.
//! Needs root and the lab's tools (iproute2, nftables, arping, redis-server/sentinel/cli); a missing one
//! fails the test with its name. Runs one lab at a time: parallel labs on two cores would distort Sentinel.

mod lab_support;

use havip_agent::lab::{Method, Scenario};
use lab_support::{assert_lossless_and_settled, run};

#[test]
fn agent_loses_no_acknowledged_write_when_the_master_host_loses_its_link_and_heals() {
    let o = run(Method::Agent, Scenario::LinkLoss);
    assert_lossless_and_settled(&o, "the agent");
}

#[test]
fn agent_loses_no_acknowledged_write_when_the_master_process_is_killed() {
    let o = run(Method::Agent, Scenario::KillMaster);
    assert_lossless_and_settled(&o, "the agent");
}

#[test]
fn agent_loses_no_acknowledged_write_when_the_new_masters_agent_is_killed_mid_failover() {
    let o = run(Method::Agent, Scenario::ManagerRestart);
    assert!(
        o.report.notes.iter().any(|n| n.starts_with("killed host")),
        "an agent was killed at +promoted-slave\n{}",
        o.diagnostics()
    );
    assert_lossless_and_settled(&o, "the agent");
}

#[test]
fn agent_loses_no_acknowledged_write_when_the_cloud_api_fails_during_the_failover() {
    let o = run(Method::Agent, Scenario::CloudFaults);
    assert!(
        o.records.requests.iter().any(|q| q.fault.is_some()),
        "the agent's API calls met the injected faults\n{}",
        o.diagnostics()
    );
    assert_lossless_and_settled(&o, "the agent");
}

#[test]
fn agent_loses_at_most_a_quarter_of_what_the_seed_script_loses_in_a_partial_partition() {
    let seed = run(Method::SeedScript, Scenario::PartialPartition);
    let agent = run(Method::Agent, Scenario::PartialPartition);
    let seed_lost = seed.report.lost.during + seed.report.lost.after;
    let agent_lost = agent.report.lost.during + agent.report.lost.after;
    println!("partial partition: seed script lost {seed_lost}, agent lost {agent_lost}");
    assert!(
        seed_lost > 0,
        "the seed script loses writes in a partial partition (else the lab does not partition)\n{}",
        seed.diagnostics()
    );
    assert!(
        agent_lost * 4 <= seed_lost,
        "the agent lost {agent_lost}, more than a quarter of the seed script's {seed_lost}\n{}",
        agent.diagnostics()
    );
    assert_eq!(agent.report.lost.before, 0, "{}", agent.diagnostics());
    assert!(agent.report.vip_on_master, "{}", agent.diagnostics());
    assert_eq!(agent.report.bad_signatures, 0, "{}", agent.diagnostics());
}
