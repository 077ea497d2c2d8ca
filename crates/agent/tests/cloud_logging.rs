//! What the cloud side logs: which credential source is used, and never a credential value, even at
//! TRACE level through retries, clock-skew correction, refresh failures and errors.
//!
//! One test in its own binary with a global subscriber: tracing caches per-callsite interest, and a
//! callsite first hit by a parallel test thread while a thread-local subscriber is being installed can
//! miss it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use havip_agent::clock::{SharedClock, TokioClock};
use havip_agent::cloud::{InstanceType, RetryPolicy, VpcClient};
use havip_agent::config::CloudConfig;
use havip_agent::credentials::{CredentialProvider, ENV_SECRET_ID, ENV_SECRET_KEY, ENV_TOKEN};
use havip_agent::metadata::MetadataClient;
use havip_testkit::testbed::logs::LogCapture;
use serde_json::json;
use tokio::time::Instant;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const T0: u64 = 1_700_000_000;

fn cloud_config(endpoint: &str) -> CloudConfig {
    toml::from_str(&format!(
        "region = \"ap-guangzhou\"\nendpoint = \"{endpoint}\"\ntimeout = \"1s\"\n"
    ))
    .unwrap()
}

fn clock() -> SharedClock {
    Arc::new(TokioClock::starting_at(
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
    ))
}

fn api_error(code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "Response": {"Error": {"Code": code, "Message": "m"}, "RequestId": "req-err"}
    }))
}

#[tokio::test]
async fn the_source_is_logged_and_no_value_ever_is() {
    let logs = LogCapture::default();
    tracing::subscriber::set_global_default(logs.subscriber(tracing::Level::TRACE)).unwrap();

    // Metadata with a role whose refresh fails (500) after the first fetch.
    let md_server = MockServer::start().await;
    Mock::given(path("/latest/meta-data/cam/security-credentials/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("havip-role"))
        .mount(&md_server)
        .await;
    Mock::given(path("/latest/meta-data/cam/security-credentials/havip-role"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "TmpSecretId": "AKIDtmp-s3cr3t", "TmpSecretKey": "tmpkey-s3cr3t", "Token": "tmptoken-s3cr3t",
            // Inside the refresh window from the start: every get() tries to refresh.
            "ExpiredTime": T0 + 200, "Code": "Success"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&md_server)
        .await;
    Mock::given(path(
        "/latest/meta-data/cam/security-credentials/havip-role",
    ))
    .respond_with(ResponseTemplate::new(500))
    .with_priority(2)
    .mount(&md_server)
    .await;
    let md = MetadataClient::new(
        &format!("{}/latest/meta-data/", md_server.uri()),
        Duration::from_secs(1),
    )
    .unwrap();

    // A VPC API that throttles, then says the clock is off, then fails for good.
    let api = MockServer::start().await;
    Mock::given(header("X-TC-Action", "DescribeHaVips"))
        .respond_with(api_error("RequestLimitExceeded"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&api)
        .await;
    Mock::given(header("X-TC-Action", "DescribeHaVips"))
        .respond_with(
            api_error("AuthFailure.SignatureExpire")
                .insert_header("Date", "Tue, 14 Nov 2023 23:13:20 GMT"),
        )
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&api)
        .await;
    Mock::given(header("X-TC-Action", "DescribeHaVips"))
        .respond_with(api_error("AuthFailure.SignatureFailure"))
        .with_priority(3)
        .mount(&api)
        .await;
    Mock::given(header("X-TC-Action", "AssociateHaVipInstance"))
        .respond_with(api_error(
            "InvalidParameterValue.DuplicatedHaVipAssociations",
        ))
        .mount(&api)
        .await;

    let env = |k: &str| match k {
        ENV_SECRET_ID => Some("AKIDenv-s3cr3t".to_owned()),
        ENV_SECRET_KEY => Some("envkey-s3cr3t".to_owned()),
        ENV_TOKEN => Some("envtoken-s3cr3t".to_owned()),
        _ => None,
    };
    let from_env = CredentialProvider::resolve(&env, &cloud_config(&api.uri()), &md, clock())
        .await
        .unwrap();
    let from_role = CredentialProvider::resolve(&|_| None, &cloud_config(&api.uri()), &md, clock())
        .await
        .unwrap();
    from_role.get().await.unwrap(); // refresh fails, current credentials kept: a warning

    let fast = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let vpc = VpcClient::new(&cloud_config(&api.uri()), from_env, clock())
        .unwrap()
        .with_retry_policy(fast);
    let err = vpc.describe_havips(&[], deadline).await.unwrap_err();
    assert_eq!(err.code(), Some("AuthFailure.SignatureFailure"));
    vpc.associate("havip-1", "ins-1", InstanceType::Cvm, deadline)
        .await
        .unwrap();
    let role_vpc = VpcClient::new(&cloud_config(&api.uri()), from_role, clock()).unwrap();
    role_vpc
        .associate("havip-1", "ins-1", InstanceType::Cvm, deadline)
        .await
        .unwrap();
    tracing::info!(debug = ?vpc, error = ?err, "debug forms");

    let text = logs.text();
    for expected in [
        "using tencent cloud credentials source=environment (TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY)",
        "using tencent cloud credentials source=CVM role havip-role (metadata service)",
        "cannot refresh cam role credentials",
        "retrying vpc api call",
        "local clock is off the tencent cloud clock",
        "instance already in the havip drift range",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("s3cr3t"),
        "a credential value was logged:\n{text}"
    );
}
