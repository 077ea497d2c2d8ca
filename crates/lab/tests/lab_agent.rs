//! The failover lab with the agent (`havip-agent run` on every host): real Redis + Sentinel in network
//! namespaces, a client writing through the VIP, the fake cloud moving the HAVIP on GARP. One run per
//! scenario; correctness is asserted (no acknowledged write lost, the VIP on exactly the master after the
//! heal, every API request signed correctly), speed is benchmarked (`cargo bench --bench lab`), not asserted.
//! Needs root and the lab's tools (iproute2, nftables, redis-server/sentinel/cli); a missing one
//! fails the test with its name. Runs one lab at a time: parallel labs on two cores would distort Sentinel.

mod lab_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use havip_agent::net::garp::send_gratuitous;
use havip_lab::topology::{DriftRange, HAVIP_ID, Topology, VIP, vip_cidr};
use havip_lab::{Method, Scenario};
use havip_testkit::fake::GarpOutcome;
use havip_testkit::testbed::netns::Lab;
use lab_support::{assert_lossless_and_settled, one_lab_at_a_time, run};

const PROBE_PORT: u16 = 7777;

/// Binds the VIP on host `i` and serves "host <i+1>" on it, one line per connection, until the process ends.
fn serve_name_on_vip(topo: &Topology, i: usize) {
    let host = topo.host(i);
    host.ns.add_addr(Lab::HOST_IF, &vip_cidr()).unwrap();
    let listener = host
        .ns
        .run(|| TcpListener::bind((VIP, PROBE_PORT)))
        .unwrap_or_else(|e| panic!("binding {VIP}:{PROBE_PORT} on host {}: {e}", i + 1));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(format!("host {}\n", i + 1).as_bytes());
        }
    });
}

/// Who answers the client on the VIP (`None`: nobody within 300 ms).
fn who_answers(topo: &Topology) -> Option<String> {
    topo.client().ns.run(|| {
        let addr = SocketAddr::from((VIP, PROBE_PORT));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        Some(text.trim().to_owned())
    })
}

/// Sends one gratuitous ARP reply for the VIP from host `i` and waits until the fake has seen it.
fn garp_from(topo: &Topology, i: usize) -> GarpOutcome {
    let before = topo.garp().seen().len();
    let host = topo.host(i);
    host.ns
        .block_on(|| send_gratuitous(Lab::HOST_IF, host.mac, VIP, true))
        .unwrap_or_else(|e| panic!("host {}: sending a gratuitous arp: {e}", i + 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = topo.garp().seen();
        if let Some(g) = seen[before..]
            .iter()
            .find(|g| g.mac == topo.host(i).mac && g.ip == VIP)
        {
            return g.outcome.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the fake saw no GARP from host {}",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_clients_traffic_follows_the_clouds_holder_and_a_stale_hosts_garp_does_not_steer_it() {
    let _one = one_lab_at_a_time();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let topo = rt
        .block_on(Topology::build("dp", DriftRange::Empty))
        .unwrap();
    serve_name_on_vip(&topo, 0);
    serve_name_on_vip(&topo, 1);
    let fake = topo.fake();

    // Nobody holds the HAVIP: both hosts have the VIP bound, yet the client reaches neither.
    let unheld = who_answers(&topo);
    // Host 1 is let in and announces: the cloud moves the HAVIP, the client follows.
    fake.set_check_associate(HAVIP_ID, false);
    let to_host1 = garp_from(&topo, 0);
    let after_move = who_answers(&topo);
    // Host 2 (a stale host, out of the drift range) announces too: the cloud ignores it, so does the client.
    fake.set_check_associate(HAVIP_ID, true);
    let stale = garp_from(&topo, 1);
    let after_stale = who_answers(&topo);
    let neigh = topo
        .client()
        .ns
        .ip(&["neigh", "show", &VIP.to_string()])
        .unwrap();

    assert_eq!(unheld, None, "no holder: the VIP's traffic goes nowhere");
    assert!(to_host1.moved(), "{to_host1:?}");
    assert_eq!(after_move.as_deref(), Some("host 1"));
    assert!(matches!(stale, GarpOutcome::NotInRange { .. }), "{stale:?}");
    assert_eq!(
        after_stale.as_deref(),
        Some("host 1"),
        "the stale host's GARP did not steer the client"
    );
    assert!(
        neigh.contains("PERMANENT"),
        "the client's entry ignores ARP: {neigh}"
    );
    assert_eq!(topo.data_path().current(), Some(0));
}

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
