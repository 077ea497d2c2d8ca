//! The fake CVM metadata service over real HTTP: the paths the agent reads, role credentials changed at
//! run time, 404s and hit counters.

use std::net::Ipv4Addr;

use havip_testkit::fake::{FakeMetadata, MetadataSpec, RoleCredentials};
use serde_json::Value;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

fn spec() -> MetadataSpec {
    MetadataSpec::new("ins-aaaaaaaa", Ipv4Addr::new(198, 18, 0, 11), MAC)
}

async fn get(md: &FakeMetadata, path: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::get(format!("{}{path}", md.endpoint()))
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn serves_identity_paths_as_a_cvm_does() {
    let md = FakeMetadata::start(spec()).await;

    assert!(
        md.endpoint().ends_with("/latest/meta-data/"),
        "{}",
        md.endpoint()
    );
    assert_eq!(get(&md, "instance-id").await, (200, "ins-aaaaaaaa".into()));
    assert_eq!(get(&md, "local-ipv4").await, (200, "198.18.0.11".into()));
    assert_eq!(get(&md, "mac").await, (200, "52:54:00:AB:CD:EF".into()));
    assert_eq!(
        get(&md, "placement/region").await,
        (200, "ap-guangzhou".into())
    );
    assert_eq!(
        get(&md, "placement/zone").await,
        (200, "ap-guangzhou-3".into())
    );
    assert_eq!(
        get(
            &md,
            "network/interfaces/macs/52:54:00:AB:CD:EF/primary-local-ipv4"
        )
        .await,
        (200, "198.18.0.11".into())
    );
    assert_eq!(get(&md, "no/such/path").await.0, 404);
    assert_eq!(md.hits("instance-id"), 1);
    assert_eq!(md.hits("no/such/path"), 1);
    assert_eq!(md.hits("local-ipv4"), 1);
}

#[tokio::test]
async fn role_credentials_can_be_bound_and_rotated_at_run_time() {
    let md = FakeMetadata::start(spec()).await;

    let unbound = get(&md, "cam/security-credentials/").await;
    md.set_role_credentials(Some(RoleCredentials::new(
        "redis-ha",
        "AKIDtmp1",
        "key1",
        "token1",
        1_700_000_000,
    )));
    let listed = get(&md, "cam/security-credentials/").await;
    let first = get(&md, "cam/security-credentials/redis-ha").await;
    md.set_role_credentials(Some(RoleCredentials::new(
        "redis-ha",
        "AKIDtmp2",
        "key2",
        "token2",
        1_700_007_200,
    )));
    let second = get(&md, "cam/security-credentials/redis-ha").await;
    let other_role = get(&md, "cam/security-credentials/other").await;

    assert_eq!(unbound.0, 404, "no role bound: 404");
    assert_eq!(listed, (200, "redis-ha".into()));
    let first: Value = serde_json::from_str(&first.1).unwrap();
    let second: Value = serde_json::from_str(&second.1).unwrap();
    assert_eq!(first["TmpSecretId"], "AKIDtmp1");
    assert_eq!(first["Token"], "token1");
    assert_eq!(first["Code"], "Success");
    assert_eq!(first["Expiration"], "2023-11-14T22:13:20Z");
    assert_eq!(second["TmpSecretId"], "AKIDtmp2");
    assert_eq!(second["TmpSecretKey"], "key2");
    assert_eq!(second["ExpiredTime"], 1_700_007_200);
    assert_eq!(other_role.0, 404);
    assert_eq!(md.hits("cam/security-credentials/redis-ha"), 2);
    assert_eq!(md.hits("cam/security-credentials/"), 2);
}
