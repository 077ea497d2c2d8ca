//! The failover lab in migrate mode (`migrate-havip` as every Sentinel's client-reconfig-script): real
//! Redis + Sentinel in network namespaces, a client writing through the VIP, the fake cloud moving the HAVIP
//! on GARP. One run per scenario; correctness is asserted (no acknowledged write lost, the VIP on exactly the master after the
//! heal, every API request signed correctly), speed is benchmarked (`cargo bench --bench lab`), not asserted.
//! Needs root and the lab's tools (iproute2, nftables, redis-server/sentinel/cli); a missing one
//! fails the test with its name. Runs one lab at a time: parallel labs on two cores would distort Sentinel.

mod lab_support;

use havip_lab::{Method, Scenario};
use lab_support::{assert_lossless_and_settled, run};

#[test]
fn migrate_mode_loses_no_acknowledged_write_when_the_master_host_loses_its_link_and_heals() {
    let o = run(Method::Migrate, Scenario::LinkLoss);
    assert_lossless_and_settled(&o, "migrate-havip");
}

#[test]
fn migrate_mode_loses_no_acknowledged_write_when_the_master_process_is_killed() {
    let o = run(Method::Migrate, Scenario::KillMaster);
    assert_lossless_and_settled(&o, "migrate-havip");
}
