//! ENI mode end to end (`[node] instance_type = "ENI"`, the ENI's id as `instance_id`): the daemon follows a
//! failover and its status names the ENI, `status --direct` names it too, and `instance_id = "auto"` resolves
//! the ENI of `node.interface` through the metadata (or fails saying what to write). The fake reports the
//! holder as the real API does (`InstanceId` = the CVM, `NetworkInterfaceId` = the ENI). The claim itself
//! against the kernel is in `claim_kernel.rs`.

mod migrate_support;

use std::sync::Arc;
use std::time::Duration;

use havip_agent::boot::{Boot, BootError, boot_with};
use havip_agent::config::Config;
use havip_testkit::fake::{FakeMetadata, MetadataSpec};
use havip_testkit::testbed::agents::{Fleet, FleetSpec, HAVIP_ID, SECRET_ID, SECRET_KEY, eni_of};
use migrate_support::ns_with_nics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_mode_daemon_follows_a_failover_and_status_names_the_holder_eni() {
    // Arrange: three agents in ENI mode, each on a secondary ENI of its CVM; the range starts empty.
    let fleet = Fleet::start(FleetSpec {
        sentinel_toml: "fence_after = \"2s\"".into(),
        eni_mode: true,
        ..FleetSpec::default()
    })
    .await
    .expect("fleet starts");
    let old = fleet.master_index().await;
    fleet
        .wait_until(
            Duration::from_secs(30),
            "the initial master's ENI to hold the vip, confirmed",
            |f| f.settled_on(old),
        )
        .await;

    // Act: kill the master's redis.
    fleet.lab.kill_redis(old);
    fleet
        .wait_until(
            Duration::from_secs(30),
            "a new master to hold the vip",
            |f| f.holders().len() == 1 && f.holders()[0] != old && f.settled_on(f.holders()[0]),
        )
        .await;
    let new = fleet.holders()[0];

    // Assert: the cloud names the new host's CVM and ENI; the drift range holds ENI entries; the agent's
    // status names the ENI as the holder and says the cloud matches.
    let h = fleet.cloud.havip(HAVIP_ID).unwrap();
    assert_eq!(
        h.instance_id,
        Some(format!("ins-fleet-{}", new + 1)),
        "{h:?}"
    );
    assert_eq!(h.network_interface_id, Some(eni_of(new)), "{h:?}");
    assert!(
        h.associations.iter().any(|a| a.instance_id == eni_of(new)),
        "{h:?}"
    );
    let status = fleet.nodes[new].status.snapshot();
    assert_eq!(status.havips[0].cloud_holder, Some(eni_of(new)));
    assert_eq!(status.havips[0].cloud_matches, Some(true));
    assert_eq!(
        fleet.master_index().await,
        new,
        "the vip is on sentinel's master"
    );

    // `status --direct` (computed from the sources, no agent) names the ENI too.
    let text = fleet.nodes[new].config_text.replace(
        "timeout = \"1s\"",
        &format!("timeout = \"1s\"\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\""),
    );
    let cfg = Config::parse_str(&text, std::path::Path::new("eni-status.toml")).unwrap();
    let report = havip_agent::status_cmd::compute(&cfg).await;
    assert_eq!(report.instance_id, eni_of(new));
    assert_eq!(
        report.havips[0].cloud_holder,
        Some(eni_of(new)),
        "{report:?}"
    );
    fleet.shutdown().await;
}

/// A config for ENI mode with `instance_id = "auto"` on `eth0`, reading metadata at `metadata`.
fn auto_eni_config(metadata: &str) -> Config {
    let text = format!(
        "[cloud]\nregion = \"ap-guangzhou\"\nendpoint = \"https://vpc.tencentcloudapi.com\"\n\
         metadata_endpoint = \"{metadata}\"\n\n[node]\ninstance_id = \"auto\"\ninstance_type = \"ENI\"\n\
         address = \"198.18.0.11\"\ninterface = \"eth0\"\n\n[sentinel]\naddresses = [\"127.0.0.1:1\"]\n\n\
         [[havip]]\nmaster = \"mymaster\"\nhavip_id = \"havip-eni00001\"\nvip = \"198.18.0.100/24\"\n"
    );
    Config::parse_str(&text, std::path::Path::new("eni-auto.toml")).unwrap()
}

/// The metadata of CVM `ins-e` with its primary ENI (198.18.0.10, a MAC no test interface has).
fn ins_e() -> MetadataSpec {
    MetadataSpec::new(
        "ins-e",
        "198.18.0.10".parse().unwrap(),
        [2, 0, 0, 0, 0, 0xe1],
    )
}

/// Boots [`auto_eni_config`] (in the caller's namespace) against a fake metadata service serving `spec`.
async fn boot_auto_eni(spec: MetadataSpec) -> Result<Boot, BootError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let md = FakeMetadata::start_on(listener, spec).await;
    boot_with(Arc::new(auto_eni_config(&md.endpoint()))).await
}

#[test]
fn auto_instance_id_in_eni_mode_is_the_eni_of_the_interface_mac() {
    let ns = ns_with_nics("eni-auto", &[("eth0", "peer0")]);
    let mac = ns.mac("eth0").unwrap();
    let resolved = ns.block_on(|| async move {
        // Arrange: eth0 is a secondary ENI of ins-e in the metadata (the primary has another MAC).
        let spec = ins_e().with_eni(mac, "eni-second01", "198.18.0.11".parse().unwrap());
        // Act
        boot_auto_eni(spec).await.map(|b| b.identity.instance_id)
    });
    assert_eq!(resolved.unwrap(), "eni-second01");
}

#[test]
fn auto_instance_id_in_eni_mode_without_an_eni_for_the_mac_is_a_config_error_saying_what_to_write()
{
    let ns = ns_with_nics("eni-miss", &[("eth0", "peer0")]);
    let err = ns.block_on(|| async move {
        // Arrange: the metadata knows only the primary ENI, with another MAC than eth0's.
        boot_auto_eni(ins_e())
            .await
            .expect_err("no ENI for eth0's MAC")
    });
    assert!(matches!(err, BootError::Node(_)), "{err:?}");
    assert!(!err.is_transient(), "retrying cannot help: {err:?}");
    let text = err.to_string();
    for want in [
        "node.instance_id",
        "node.interface",
        "\"eth0\"",
        "instance_id = \"eni-",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
}
