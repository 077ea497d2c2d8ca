//! The credential chain (environment, config, CVM role) and the CAM role credential cache, against a
//! wiremock metadata service. Role expiry runs on paused tokio time with the crate's `TokioClock`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use havip_agent::clock::{SharedClock, TokioClock};
use havip_agent::config::CloudConfig;
use havip_agent::credentials::{
    Credential, CredentialError, CredentialProvider, CredentialSource, ENV_SECRET_ID,
    ENV_SECRET_KEY, ENV_TOKEN, MAX_ROLE_CREDENTIAL_LIFETIME, clamp_expiry,
};
use havip_agent::metadata::MetadataClient;
use havip_agent::secret::Secret;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BASE: &str = "/latest/meta-data/";
const ROLE_LIST: &str = "/latest/meta-data/cam/security-credentials/";
const ROLE_DOC: &str = "/latest/meta-data/cam/security-credentials/havip-role";
/// Wall-clock start of every test: 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000;

fn cloud_config(keys: Option<(&str, &str)>) -> CloudConfig {
    let mut text = String::from("region = \"ap-guangzhou\"\n");
    if let Some((id, key)) = keys {
        text.push_str(&format!("secret_id = \"{id}\"\nsecret_key = \"{key}\"\n"));
    }
    toml::from_str(&text).unwrap()
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn clock() -> SharedClock {
    Arc::new(TokioClock::starting_at(
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
    ))
}

fn metadata(server: &MockServer) -> MetadataClient {
    MetadataClient::new(&format!("{}{BASE}", server.uri()), Duration::from_secs(2)).unwrap()
}

fn role_doc(n: u32, expires_at: u64, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "TmpSecretId": format!("AKIDtmp{n}"),
        "TmpSecretKey": format!("tmpkey{n}-s3cr3t"),
        "Token": format!("token{n}-s3cr3t"),
        "ExpiredTime": expires_at,
        "Expiration": "ignored",
        "Code": code,
    }))
}

fn role_creds(n: u32) -> Credential {
    Credential {
        secret_id: Secret::new(format!("AKIDtmp{n}")),
        secret_key: Secret::new(format!("tmpkey{n}-s3cr3t")),
        token: Some(Secret::new(format!("token{n}-s3cr3t"))),
    }
}

/// Mounts the role listing and, for the first `first_times` fetches, role document #1.
async fn mount_role(server: &MockServer, first: ResponseTemplate, first_times: u64) {
    Mock::given(method("GET"))
        .and(path(ROLE_LIST))
        .respond_with(ResponseTemplate::new(200).set_body_string("havip-role\n"))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(ROLE_DOC))
        .respond_with(first)
        .up_to_n_times(first_times)
        .with_priority(1)
        .mount(server)
        .await;
}

/// Mounts what the role document answers once the first answers are used up.
async fn then_role(server: &MockServer, next: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(ROLE_DOC))
        .respond_with(next)
        .with_priority(2)
        .mount(server)
        .await;
}

async fn hits(server: &MockServer, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == p)
        .count()
}

/// Runs real I/O while tokio time is paused without letting the clock jump: a running `spawn_blocking`
/// task inhibits auto-advance (documented on `tokio::time::pause`), so the HTTP client's timeout timers
/// cannot fire while the request waits for the loopback server. Time then moves only by `advance`.
async fn real_io<F: Future>(f: F) -> F::Output {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    });
    let out = f.await;
    drop(tx);
    blocker.await.unwrap();
    out
}

#[tokio::test]
async fn environment_wins_over_config_and_role() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 100).await;
    let env = env_of(&[
        (ENV_SECRET_ID, "AKIDenv"),
        (ENV_SECRET_KEY, "envkey-s3cr3t"),
        (ENV_TOKEN, "envtoken-s3cr3t"),
    ]);

    let provider = CredentialProvider::resolve(
        &env,
        &cloud_config(Some(("AKIDcfg", "cfgkey"))),
        &metadata(&server),
        clock(),
    )
    .await
    .unwrap();

    assert_eq!(provider.source(), &CredentialSource::Environment);
    assert_eq!(
        provider.get().await.unwrap(),
        Credential {
            secret_id: Secret::new("AKIDenv"),
            secret_key: Secret::new("envkey-s3cr3t"),
            token: Some(Secret::new("envtoken-s3cr3t")),
        },
        "the environment's token is carried, to be sent as X-TC-Token"
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        0,
        "metadata not asked"
    );
}

#[tokio::test]
async fn config_keys_are_used_when_the_environment_has_none() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 100).await;
    // Blank variables count as unset.
    let env = env_of(&[(ENV_SECRET_ID, ""), (ENV_SECRET_KEY, "  ")]);

    let provider = CredentialProvider::resolve(
        &env,
        &cloud_config(Some(("AKIDcfg", "cfgkey-s3cr3t"))),
        &metadata(&server),
        clock(),
    )
    .await
    .unwrap();

    assert_eq!(provider.source(), &CredentialSource::ConfigFile);
    let creds = provider.get().await.unwrap();
    assert_eq!(creds.secret_id.expose(), "AKIDcfg");
    assert_eq!(creds.secret_key.expose(), "cfgkey-s3cr3t");
    assert_eq!(creds.token, None, "long-term keys carry no token");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        0,
        "metadata not asked"
    );
}

#[tokio::test]
async fn cvm_role_is_used_when_no_keys_are_configured() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 100).await;

    let provider =
        CredentialProvider::resolve(&no_env, &cloud_config(None), &metadata(&server), clock())
            .await
            .unwrap();

    assert_eq!(
        provider.source(),
        &CredentialSource::CvmRole {
            role: "havip-role".into()
        }
    );
    assert_eq!(
        provider.source().to_string(),
        "CVM role havip-role (metadata service)"
    );
    assert_eq!(provider.get().await.unwrap(), role_creds(1));
}

#[tokio::test]
async fn half_a_key_pair_is_an_error_naming_both_halves() {
    let server = MockServer::start().await;
    let md = metadata(&server);

    let err = CredentialProvider::resolve(
        &env_of(&[(ENV_SECRET_ID, "AKIDenv")]),
        &cloud_config(None),
        &md,
        clock(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TENCENTCLOUD_SECRET_ID is set but TENCENTCLOUD_SECRET_KEY is not: set both or neither"
    );

    let mut cloud = cloud_config(None);
    cloud.secret_key = Some(Secret::new("cfgkey"));
    let err = CredentialProvider::resolve(&no_env, &cloud, &md, clock())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CredentialError::Incomplete {
            set: "cloud.secret_key",
            missing: "cloud.secret_id"
        }
    );
}

#[tokio::test]
async fn no_role_bound_is_a_clear_error() {
    let server = MockServer::start().await; // every path 404

    let err =
        CredentialProvider::resolve(&no_env, &cloud_config(None), &metadata(&server), clock())
            .await
            .unwrap_err();

    assert!(
        matches!(err, CredentialError::NoRoleBound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("no CAM role bound to this CVM"), "{text}");
    assert!(
        text.contains(&format!("{}{ROLE_LIST} answered 404", server.uri())),
        "{text}"
    );
    assert!(
        text.contains("TENCENTCLOUD_SECRET_ID") && text.contains("cloud.secret_id"),
        "says what else was tried: {text}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unreachable_metadata_says_what_was_tried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let md = MetadataClient::new(
        &format!("http://127.0.0.1:{port}{BASE}"),
        Duration::from_secs(2),
    )
    .unwrap();

    let err = CredentialProvider::resolve(&no_env, &cloud_config(None), &md, clock())
        .await
        .unwrap_err();

    let text = err.to_string();
    assert!(
        text.contains("the CVM role lookup failed: metadata service unreachable at"),
        "{text}"
    );
    assert!(text.contains("is this a CVM?"), "{text}");
    assert!(err.is_retryable(), "an unreachable service may come back");
}

#[tokio::test]
async fn role_credentials_with_code_other_than_success_are_rejected() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Failure"), 100).await;

    let err =
        CredentialProvider::resolve(&no_env, &cloud_config(None), &metadata(&server), clock())
            .await
            .unwrap_err();

    assert_eq!(
        err,
        CredentialError::RoleRejected {
            role: "havip-role".into(),
            code: "Failure".into()
        }
    );
    assert!(err.to_string().contains("expected \"Success\""), "{err}");
    assert!(!format!("{err} {err:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn role_listed_but_its_credentials_404_is_reported() {
    let server = MockServer::start().await;
    Mock::given(path(ROLE_LIST))
        .respond_with(ResponseTemplate::new(200).set_body_string("havip-role"))
        .mount(&server)
        .await;

    let err =
        CredentialProvider::resolve(&no_env, &cloud_config(None), &metadata(&server), clock())
            .await
            .unwrap_err();

    assert!(
        matches!(err, CredentialError::RoleNotFound { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no CAM role bound under the name havip-role"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn role_credentials_are_cached_and_refreshed_when_300_seconds_remain() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 1).await;
    then_role(&server, role_doc(2, T0 + 7200, "Success")).await;
    let md = metadata(&server);

    let provider = real_io(CredentialProvider::resolve(
        &no_env,
        &cloud_config(None),
        &md,
        clock(),
    ))
    .await
    .unwrap();
    assert_eq!(hits(&server, ROLE_DOC).await, 1, "fetched once at start-up");

    assert_eq!(real_io(provider.get()).await.unwrap(), role_creds(1));
    assert_eq!(hits(&server, ROLE_DOC).await, 1, "served from the cache");

    tokio::time::advance(Duration::from_secs(3600 - 301)).await;
    assert_eq!(
        real_io(provider.get()).await.unwrap(),
        role_creds(1),
        "301 s left: still cached"
    );
    assert_eq!(hits(&server, ROLE_DOC).await, 1);

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        real_io(provider.get()).await.unwrap(),
        role_creds(2),
        "300 s left: refreshed"
    );
    assert_eq!(hits(&server, ROLE_DOC).await, 2);

    let clone = provider.clone();
    assert_eq!(
        real_io(clone.get()).await.unwrap(),
        role_creds(2),
        "clones share the cache"
    );
    assert_eq!(hits(&server, ROLE_DOC).await, 2);
}

/// Role document #`n` with a raw `ExpiredTime` (any JSON number).
fn role_doc_expiring(n: u32, expired_time: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "TmpSecretId": format!("AKIDtmp{n}"),
        "TmpSecretKey": format!("tmpkey{n}-s3cr3t"),
        "Token": format!("token{n}-s3cr3t"),
        "ExpiredTime": expired_time,
        "Code": "Success",
    }))
}

#[test]
fn expiry_is_clamped_between_zero_and_the_longest_lifetime() {
    let now = T0 as i64;
    let max = now + MAX_ROLE_CREDENTIAL_LIFETIME.as_secs() as i64;
    for (expired_time, want) in [
        (now + 7200, now + 7200),
        (i64::MAX, max),
        (3_093_527_980_800, max), // year 99999
        (-1, 0),
        (i64::MIN, 0),
    ] {
        assert_eq!(
            clamp_expiry(expired_time, now),
            want,
            "ExpiredTime {expired_time}"
        );
    }
    assert_eq!(
        clamp_expiry(i64::MAX, i64::MAX),
        i64::MAX,
        "no wrap near the top"
    );
    assert_eq!(
        clamp_expiry(5, i64::MIN),
        0,
        "a clock before 1970 cannot wrap either"
    );
}

// Regression: `expires_at - now` wrapped (a panic in debug builds) on a hostile `ExpiredTime`, and a
// far-future one pinned the first credentials forever.
#[tokio::test(start_paused = true)]
async fn a_far_future_expired_time_cannot_wrap_and_is_refreshed_after_the_longest_lifetime() {
    for far in [
        serde_json::json!(i64::MAX),
        serde_json::json!(3_093_527_980_800_i64),
    ] {
        let server = MockServer::start().await;
        mount_role(&server, role_doc_expiring(1, far.clone()), 1).await;
        then_role(&server, role_doc(2, T0 + 2 * 86_400, "Success")).await;
        let provider = real_io(CredentialProvider::resolve(
            &no_env,
            &cloud_config(None),
            &metadata(&server),
            clock(),
        ))
        .await
        .unwrap();

        // Offsets at both ends of i64 (the VPC client learns them from a server's Date header).
        assert_eq!(
            real_io(provider.get_at(i64::MAX)).await.unwrap(),
            role_creds(2),
            "{far}"
        );
        assert_eq!(
            real_io(provider.get_at(i64::MIN)).await.unwrap(),
            role_creds(2),
            "{far}"
        );
    }

    let server = MockServer::start().await;
    mount_role(
        &server,
        role_doc_expiring(1, serde_json::json!(i64::MAX)),
        1,
    )
    .await;
    then_role(&server, role_doc(2, T0 + 2 * 86_400, "Success")).await;
    let provider = real_io(CredentialProvider::resolve(
        &no_env,
        &cloud_config(None),
        &metadata(&server),
        clock(),
    ))
    .await
    .unwrap();
    assert_eq!(
        real_io(provider.get()).await.unwrap(),
        role_creds(1),
        "cached at first"
    );
    let lifetime = MAX_ROLE_CREDENTIAL_LIFETIME.as_secs();
    tokio::time::advance(Duration::from_secs(lifetime - 300)).await;
    assert_eq!(
        real_io(provider.get()).await.unwrap(),
        role_creds(2),
        "refreshed 300 s before the longest lifetime ends, not in 292 billion years"
    );
    assert_eq!(hits(&server, ROLE_DOC).await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_negative_expired_time_counts_as_expired_without_wrapping() {
    for past in [serde_json::json!(-1), serde_json::json!(i64::MIN)] {
        let server = MockServer::start().await;
        mount_role(&server, role_doc_expiring(1, past.clone()), 1).await;
        then_role(&server, role_doc(2, T0 + 3600, "Success")).await;
        let provider = real_io(CredentialProvider::resolve(
            &no_env,
            &cloud_config(None),
            &metadata(&server),
            clock(),
        ))
        .await
        .unwrap();

        assert_eq!(
            real_io(provider.get()).await.unwrap(),
            role_creds(2),
            "{past}: already expired, so fetched again"
        );
        assert_eq!(
            real_io(provider.get_at(i64::MIN)).await.unwrap(),
            role_creds(2),
            "{past}"
        );
    }
}

// Guards the metadata client's redaction: serde_json's messages quote the offending value.
#[tokio::test]
async fn a_role_document_with_a_bad_field_is_reported_without_its_values() {
    const MARKER: &str = "Zq9RoleMarker5521";
    for (name, doc) in [
        (
            "ExpiredTime as a string",
            serde_json::json!({"TmpSecretId": "AKIDtmp1", "TmpSecretKey": "k", "Token": "t",
                "ExpiredTime": MARKER, "Code": "Success"}),
        ),
        (
            "TmpSecretKey as an object",
            serde_json::json!({"TmpSecretId": "AKIDtmp1", "TmpSecretKey": {"v": MARKER}, "Token": "t",
                "ExpiredTime": 1, "Code": "Success"}),
        ),
        (
            "Token as a number",
            serde_json::json!({"TmpSecretId": "AKIDtmp1", "TmpSecretKey": MARKER, "Token": 9_937_755_210_u64,
                "ExpiredTime": 1, "Code": "Success"}),
        ),
    ] {
        let server = MockServer::start().await;
        mount_role(&server, ResponseTemplate::new(200).set_body_json(doc), 1).await;
        let e =
            CredentialProvider::resolve(&no_env, &cloud_config(None), &metadata(&server), clock())
                .await
                .expect_err(name);
        let shown = format!("{e} / {e:?}");
        assert!(
            shown.contains("missing or mistyped field"),
            "{name}: {shown}"
        );
        assert!(!shown.contains(MARKER), "{name}: {shown}");
        assert!(!shown.contains("9937755210"), "{name}: {shown}");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_refresh() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 1).await;
    // A slow metadata answer, so that every caller arrives while the refresh is in flight.
    then_role(
        &server,
        role_doc(2, T0 + 7200, "Success").set_delay(Duration::from_millis(200)),
    )
    .await;
    let md = metadata(&server);
    let provider = real_io(CredentialProvider::resolve(
        &no_env,
        &cloud_config(None),
        &md,
        clock(),
    ))
    .await
    .unwrap();

    tokio::time::advance(Duration::from_secs(3600 - 100)).await;
    let callers = (0..10).map(|_| {
        let p = provider.clone();
        tokio::spawn(async move { p.get().await })
    });
    let results = real_io(futures::future::join_all(callers)).await;

    for r in results {
        assert_eq!(r.unwrap().unwrap(), role_creds(2));
    }
    assert_eq!(
        hits(&server, ROLE_DOC).await,
        2,
        "one start-up fetch and one shared refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_current_credentials_until_they_expire() {
    let server = MockServer::start().await;
    mount_role(&server, role_doc(1, T0 + 3600, "Success"), 1).await;
    then_role(&server, ResponseTemplate::new(500)).await;
    let md = metadata(&server);
    let provider = real_io(CredentialProvider::resolve(
        &no_env,
        &cloud_config(None),
        &md,
        clock(),
    ))
    .await
    .unwrap();

    tokio::time::advance(Duration::from_secs(3600 - 200)).await;
    assert_eq!(
        real_io(provider.get()).await.unwrap(),
        role_creds(1),
        "still valid: kept"
    );
    assert_eq!(hits(&server, ROLE_DOC).await, 2, "a refresh was tried");
    assert_eq!(real_io(provider.get()).await.unwrap(), role_creds(1));
    assert_eq!(
        hits(&server, ROLE_DOC).await,
        2,
        "no new try right after a failure"
    );

    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(real_io(provider.get()).await.unwrap(), role_creds(1));
    assert_eq!(
        hits(&server, ROLE_DOC).await,
        3,
        "tried again after the retry interval"
    );

    tokio::time::advance(Duration::from_secs(200)).await;
    let err = real_io(provider.get()).await.unwrap_err();
    assert!(
        matches!(err, CredentialError::RoleFetch { .. }),
        "expired: the failure shows: {err:?}"
    );
    assert!(
        err.is_retryable(),
        "HTTP 500 from the metadata service may pass"
    );
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

/// Regression: a daemon started while the metadata service was down must pick up the CAM role once it is
/// back, instead of running without the cloud until restarted.
#[tokio::test]
async fn a_deferred_role_is_looked_up_on_first_use_once_metadata_answers() {
    use havip_agent::credentials::CredentialSource;
    use havip_testkit::fake::{FakeMetadata, MetadataSpec, RoleCredentials};
    let expires = havip_agent::clock::unix_seconds(SystemTime::now()) + 3600;
    let fake = FakeMetadata::start(
        MetadataSpec::new("ins-1", "198.18.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 1]).with_role(
            RoleCredentials::new("r1", "AKIDtmp", "tmpkey", "tok", expires),
        ),
    )
    .await;
    let client = MetadataClient::new(&fake.endpoint(), Duration::from_millis(200)).unwrap();
    fake.set_delay(Some(Duration::from_secs(5)));
    let provider = CredentialProvider::deferred_role(&client, havip_agent::clock::system());
    assert_eq!(provider.source(), &CredentialSource::CvmRolePending);

    let e = provider.get().await.expect_err("metadata is down");
    assert!(e.is_retryable(), "{e}");

    fake.set_delay(None);
    let c = provider.get().await.expect("metadata is back");
    assert_eq!(c.secret_id.expose(), "AKIDtmp");
    assert_eq!(c.token.as_ref().map(|t| t.expose()), Some("tok"));
}

// ---- role credentials against the fake cloud: the server's clock and its token verdicts ----

mod against_the_fake_cloud {
    use super::*;
    use havip_agent::clock::{Clock, unix_seconds};
    use havip_agent::cloud::{RetryPolicy, VpcClient};
    use havip_testkit::fake::{FakeCloud, FakeMetadata, MetadataSpec, RoleCredentials};
    use tokio::time::Instant;

    const ROLE: &str = "havip-role";

    /// A host clock `behind` seconds behind the real one.
    #[derive(Debug)]
    struct Behind(u64);

    impl Clock for Behind {
        fn now(&self) -> SystemTime {
            SystemTime::now() - Duration::from_secs(self.0)
        }
    }

    fn role(n: u32, expires_at: i64) -> RoleCredentials {
        RoleCredentials::new(
            ROLE,
            &format!("AKIDtmp{n}"),
            &format!("tmpkey{n}-s3cr3t"),
            &format!("token{n}-s3cr3t"),
            expires_at,
        )
    }

    fn accept(fake: &FakeCloud, n: u32) {
        fake.add_temporary_key(
            &format!("AKIDtmp{n}"),
            &format!("tmpkey{n}-s3cr3t"),
            &format!("token{n}-s3cr3t"),
        );
    }

    /// A metadata service serving role credentials #1 (expiring at `expires_at`, server time), a provider
    /// that fetched them, and a VPC client of `fake` on `clock`.
    async fn setup(
        fake: &FakeCloud,
        expires_at: i64,
        clock: SharedClock,
    ) -> (FakeMetadata, VpcClient) {
        let md = FakeMetadata::start(
            MetadataSpec::new("ins-1", "198.18.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 1])
                .with_role(role(1, expires_at)),
        )
        .await;
        let client = MetadataClient::new(&md.endpoint(), Duration::from_secs(2)).unwrap();
        let creds =
            CredentialProvider::resolve(&no_env, &cloud_config(None), &client, clock.clone())
                .await
                .unwrap();
        let cloud: CloudConfig = toml::from_str(&format!(
            "region = \"ap-guangzhou\"\nendpoint = \"{}\"\n",
            fake.endpoint()
        ))
        .unwrap();
        let vpc = VpcClient::new(&cloud, creds, clock)
            .unwrap()
            .with_retry_policy(RetryPolicy {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            });
        (md, vpc)
    }

    #[tokio::test]
    async fn a_host_clock_behind_the_server_refreshes_role_credentials_by_the_servers_clock() {
        let fake = FakeCloud::start().await;
        accept(&fake, 1);
        accept(&fake, 2);
        let server_now = unix_seconds(SystemTime::now());
        // Ten minutes behind: by the host's clock #1 has 800 s left, by the server's only 200 s, less
        // than the 300 s before expiry at which credentials are refreshed.
        let (md, vpc) = setup(&fake, server_now + 200, Arc::new(Behind(600))).await;
        md.set_role_credentials(Some(role(2, server_now + 3600)));

        vpc.describe_havips(&[], Instant::now() + Duration::from_secs(5))
            .await
            .expect("the call succeeds");

        assert!(
            vpc.clock_offset() >= 599,
            "offset learned: {}",
            vpc.clock_offset()
        );
        let requests = fake.requests();
        let ok = requests
            .iter()
            .find(|r| r.error_code.is_none())
            .expect("a successful request");
        assert_eq!(
            ok.secret_id.as_deref(),
            Some("AKIDtmp2"),
            "signed with refreshed credentials, as the server's clock says #1 expires soon: {requests:?}"
        );
    }

    #[tokio::test]
    async fn a_token_failure_refetches_the_role_credentials_once_and_retries() {
        let fake = FakeCloud::start().await;
        // The server no longer honours #1's token (expired by its clock, or revoked).
        fake.add_temporary_key("AKIDtmp1", "tmpkey1-s3cr3t", "some-other-token");
        accept(&fake, 2);
        let server_now = unix_seconds(SystemTime::now());
        let (md, vpc) = setup(&fake, server_now + 3600, havip_agent::clock::system()).await;
        md.set_role_credentials(Some(role(2, server_now + 7200)));
        let fetches = md.hits("cam/security-credentials/havip-role");

        vpc.describe_havips(&[], Instant::now() + Duration::from_secs(5))
            .await
            .expect("one refetch and one retry succeed");

        let codes: Vec<(Option<String>, Option<String>)> = fake
            .requests()
            .iter()
            .map(|r| (r.secret_id.clone(), r.error_code.clone()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (
                    Some("AKIDtmp1".into()),
                    Some("AuthFailure.TokenFailure".into())
                ),
                (Some("AKIDtmp2".into()), None),
            ]
        );
        assert_eq!(md.hits("cam/security-credentials/havip-role"), fetches + 1);

        // Refused again: no second refetch within the retry interval, and the error is returned.
        fake.add_temporary_key("AKIDtmp2", "tmpkey2-s3cr3t", "revoked");
        fake.clear_requests();
        let err = vpc
            .describe_havips(&[], Instant::now() + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("AuthFailure.TokenFailure"), "{err}");
        assert_eq!(
            fake.requests().len(),
            1,
            "not retried without new credentials"
        );
        assert_eq!(md.hits("cam/security-credentials/havip-role"), fetches + 1);
    }

    // Guards the header path: a credential that cannot go into a header is reported by name, not value.
    #[tokio::test]
    async fn a_credential_that_cannot_be_a_header_is_reported_without_its_value() {
        const MARKER: &str = "Zq9EnvMarker3318";
        for (name, env) in [
            (
                "SecretId with a newline",
                env_of(&[
                    (ENV_SECRET_ID, "AKIDx\nZq9EnvMarker3318"),
                    (ENV_SECRET_KEY, "k3y-s3cr3t"),
                ]),
            ),
            (
                "token with a newline",
                env_of(&[
                    (ENV_SECRET_ID, "AKIDx"),
                    (ENV_SECRET_KEY, "k3y-s3cr3t"),
                    (ENV_TOKEN, "tok\nZq9EnvMarker3318"),
                ]),
            ),
        ] {
            let fake = FakeCloud::start().await;
            let md = MetadataClient::new("http://127.0.0.1:9/", Duration::from_secs(1)).unwrap();
            let creds = CredentialProvider::resolve(&env, &cloud_config(None), &md, clock())
                .await
                .unwrap();
            assert!(!format!("{creds:?}").contains(MARKER), "{name}");
            let cloud: CloudConfig = toml::from_str(&format!(
                "region = \"ap-guangzhou\"\nendpoint = \"{}\"\n",
                fake.endpoint()
            ))
            .unwrap();
            let vpc = VpcClient::new(&cloud, creds, clock()).unwrap();

            let e = vpc
                .describe_havips(&[], Instant::now() + Duration::from_secs(5))
                .await
                .expect_err(name);

            let shown = format!("{e} / {e:?}");
            assert!(
                shown.contains("cannot be sent in an HTTP header"),
                "{name}: {shown}"
            );
            assert!(
                shown.contains("credentials ("),
                "{name}: the credential is named: {shown}"
            );
            assert!(!shown.contains(MARKER), "{name}: {shown}");
            assert!(fake.requests().is_empty(), "{name}: nothing was sent");
        }
    }
}
