//! The VPC client against plain wiremock mocks set up per test: retry classes, deadlines, the clock-skew
//! retry, lenient decoding, the request as sent versus as signed, and secrets kept out of errors; and
//! against the fake cloud: transient codes, the per-action rate limit (client and fake), batching of
//! concurrent calls, and the warm connection behind a slow front.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use havip_agent::clock::{Clock, SharedClock};
use havip_agent::cloud::{
    ApiObserver, CloudError, HaVip, HaVipAssociation, HaVipState, InstanceType, RetryPolicy,
    TaskStatus, VpcClient,
};
use havip_agent::config::CloudConfig;
use havip_agent::credentials::{Credential, CredentialProvider};
use havip_agent::secret::Secret;
use havip_agent::tc3::{self, SigningInput};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wiremock::matchers::{body_partial_json, header, method};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Every test's wall clock: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000;
const SECRET_ID: &str = "AKIDs3cr3tid";
const SECRET_KEY: &str = "key-s3cr3t";
const TOKEN: &str = "token-s3cr3t";

#[derive(Debug)]
struct FixedClock(SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

fn fixed_clock() -> SharedClock {
    Arc::new(FixedClock(
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 as u64),
    ))
}

fn cloud_config(endpoint: &str, timeout: &str) -> CloudConfig {
    toml::from_str(&format!(
        "region = \"ap-guangzhou\"\nendpoint = \"{endpoint}\"\ntimeout = \"{timeout}\"\n"
    ))
    .unwrap()
}

fn credentials(token: bool) -> CredentialProvider {
    CredentialProvider::fixed(Credential {
        secret_id: Secret::new(SECRET_ID),
        secret_key: Secret::new(SECRET_KEY),
        token: token.then(|| Secret::new(TOKEN)),
    })
}

/// Fast backoff so retry tests do not wait.
const FAST: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(1),
    cap: Duration::from_millis(5),
};

fn client_for(endpoint: &str, timeout: &str, token: bool) -> VpcClient {
    VpcClient::new(
        &cloud_config(endpoint, timeout),
        credentials(token),
        fixed_clock(),
    )
    .unwrap()
    .with_retry_policy(FAST)
}

fn client(server: &MockServer) -> VpcClient {
    client_for(&server.uri(), "2s", false)
}

fn in_secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

/// `{"Response": {...fields, "RequestId"}}`
fn ok(fields: Value) -> ResponseTemplate {
    let mut response = fields;
    response["RequestId"] = json!("req-ok");
    ResponseTemplate::new(200).set_body_json(json!({ "Response": response }))
}

fn empty_set() -> ResponseTemplate {
    ok(json!({"HaVipSet": [], "TotalCount": 0}))
}

/// An API error: HTTP 200 with `Response.Error`.
fn api_error(code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "Response": {"Error": {"Code": code, "Message": format!("message of {code}")}, "RequestId": "req-err"}
    }))
}

async fn mount_once(server: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .respond_with(answer)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
}

async fn mount_always(server: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .respond_with(answer)
        .with_priority(5)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

fn header_of<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Option<String>)>>);

impl ApiObserver for Recorder {
    fn observe(&self, action: &str, _elapsed: Duration, error_code: Option<&str>) {
        self.0
            .lock()
            .unwrap()
            .push((action.to_owned(), error_code.map(str::to_owned)));
    }
}

impl Recorder {
    fn codes(&self) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

fn observed(server_client: VpcClient) -> (VpcClient, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (server_client.with_observer(rec.clone()), rec)
}

const RETRIED_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "RequestLimitExceeded.UinLimitExceeded",
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
    "RequestLimitExceeded.IPLimitExceeded",
    "InternalError",
    "InternalError.ServerError",
    "InternalError.ModuleError",
    "UnsupportedOperation.MutexOperationTaskRunning",
    "ServiceUnavailable",
    "ServiceUnavailable.Maintenance",
    "ActionLocked",
    "ResourceUnavailable",
    "ResourceUnavailable.HaVip",
];

const NEVER_RETRIED_CODES: &[&str] = &[
    "AuthFailure.SignatureFailure",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.TokenFailure",
    "AuthFailure.InvalidSecretId",
    "AuthFailure.UnauthorizedOperation",
    "AuthFailure.MFAFailure",
    "InvalidParameter",
    "InvalidParameter.Coexist",
    "InvalidParameterValue",
    "InvalidParameterValue.Malformed",
    "MissingParameter",
    "ResourceNotFound",
    "LimitExceeded",
    "InvalidAction",
    "NoSuchVersion",
    "UnauthorizedOperation",
    "UnsupportedOperation",
    "FailedOperation",
    "SomeBrandNewCode.NobodyKnows",
];

#[tokio::test]
async fn each_retried_code_is_retried_and_then_succeeds() {
    for code in RETRIED_CODES {
        let server = MockServer::start().await;
        mount_once(&server, api_error(code)).await;
        mount_always(&server, empty_set()).await;
        let (client, rec) = observed(client(&server));

        let result = client
            .describe_havips(&["havip-1".into()], in_secs(10))
            .await;

        assert_eq!(result.unwrap(), vec![], "{code}: succeeds after a retry");
        assert_eq!(requests(&server).await.len(), 2, "{code}: sent twice");
        assert_eq!(
            rec.codes(),
            vec![Some(code.to_string()), None],
            "{code}: observed per attempt"
        );
    }
}

#[tokio::test]
async fn http_5xx_is_retried_and_then_succeeds() {
    for status in [500u16, 502, 503, 504] {
        let server = MockServer::start().await;
        mount_once(
            &server,
            ResponseTemplate::new(status).set_body_string("<html>bad gateway</html>"),
        )
        .await;
        mount_always(&server, empty_set()).await;
        let (client, rec) = observed(client(&server));

        client
            .describe_havips(&["havip-1".into()], in_secs(10))
            .await
            .unwrap_or_else(|e| panic!("HTTP {status}: {e}"));

        assert_eq!(
            requests(&server).await.len(),
            2,
            "HTTP {status}: sent twice"
        );
        assert_eq!(
            rec.codes(),
            vec![Some(format!("http_{status}")), None],
            "HTTP {status}"
        );
    }
}

#[tokio::test]
async fn a_timed_out_request_is_retried_and_then_succeeds() {
    let server = MockServer::start().await;
    mount_once(&server, empty_set().set_delay(Duration::from_secs(5))).await;
    mount_always(
        &server,
        ok(json!({"HaVipSet": [{"HaVipId": "havip-1"}], "TotalCount": 1})),
    )
    .await;
    let (client, rec) = observed(client_for(&server.uri(), "200ms", false));

    let havip = client.describe_havip("havip-1", in_secs(10)).await.unwrap();

    assert_eq!(havip.havip_id, "havip-1");
    assert_eq!(requests(&server).await.len(), 2);
    assert_eq!(rec.codes(), vec![Some("timeout".into()), None]);
}

/// A server whose first connection is closed without an answer; later ones get `answer`.
async fn drop_first_connection(answer: Value) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                drop(sock);
                continue;
            }
            let body = answer.to_string();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as many body bytes as Content-Length says.
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_then_succeeds() {
    let (url, connections) = drop_first_connection(
        json!({"Response": {"HaVipSet": [], "TotalCount": 0, "RequestId": "r"}}),
    )
    .await;
    let (client, rec) = observed(client_for(&url, "2s", false));

    client
        .describe_havips(&["havip-1".into()], in_secs(10))
        .await
        .unwrap();

    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(rec.codes(), vec![Some("transport".into()), None]);
}

#[tokio::test]
async fn each_never_retried_code_is_sent_exactly_once() {
    for code in NEVER_RETRIED_CODES {
        let server = MockServer::start().await;
        mount_always(&server, api_error(code)).await;
        let (client, rec) = observed(client(&server));

        let err = client
            .associate("havip-1", "ins-1", InstanceType::Cvm, in_secs(10))
            .await
            .unwrap_err();

        assert_eq!(err.code(), Some(*code), "{code}: {err}");
        assert_eq!(err.request_id(), Some("req-err"), "{code}");
        assert!(!err.is_retryable(), "{code}");
        assert_eq!(requests(&server).await.len(), 1, "{code}: sent once");
        assert_eq!(rec.codes(), vec![Some(code.to_string())], "{code}");
        assert_eq!(
            err.to_string(),
            format!("{code}: message of {code} (RequestId req-err)")
        );
    }
}

#[tokio::test]
async fn client_errors_and_garbage_are_not_retried() {
    for (answer, label) in [
        (
            ResponseTemplate::new(400).set_body_string("bad"),
            "http_400",
        ),
        (
            ResponseTemplate::new(403).set_body_string("forbidden"),
            "http_403",
        ),
        (ResponseTemplate::new(404), "http_404"),
        (
            ResponseTemplate::new(200).set_body_string("<html>captive portal</html>"),
            "decode",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"Result": {}})),
            "decode",
        ),
    ] {
        let server = MockServer::start().await;
        mount_always(&server, answer).await;
        let (client, rec) = observed(client(&server));

        let err = client.describe_havips(&[], in_secs(10)).await.unwrap_err();

        assert!(!err.is_retryable(), "{label}: {err}");
        assert_eq!(requests(&server).await.len(), 1, "{label}: sent once");
        assert_eq!(rec.codes(), vec![Some(label.to_string())]);
    }
}

#[tokio::test]
async fn the_deadline_bounds_the_attempts() {
    let server = MockServer::start().await;
    // Every answer takes 150 ms: within a 400 ms deadline there is room for at most three attempts.
    mount_always(
        &server,
        api_error("InternalError").set_delay(Duration::from_millis(150)),
    )
    .await;
    let client = client_for(&server.uri(), "10s", false);

    let err = client
        .describe_havips(&[], Instant::now() + Duration::from_millis(400))
        .await
        .unwrap_err();

    let sent = requests(&server).await.len();
    assert!(
        (1..=3).contains(&sent),
        "at most 3 attempts fit in the deadline, saw {sent}"
    );
    assert!(
        err.code() == Some("InternalError") || matches!(err, CloudError::Timeout { .. }),
        "the last attempt's error is returned: {err:?}"
    );
}

#[tokio::test]
async fn the_request_timeout_is_cut_to_the_time_left() {
    let server = MockServer::start().await;
    // Would answer (with an error) only after 5 s; the configured timeout is 30 s.
    mount_always(
        &server,
        api_error("InternalError").set_delay(Duration::from_secs(5)),
    )
    .await;
    let client = client_for(&server.uri(), "30s", false);

    let err = client
        .describe_havips(&[], Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();

    match err {
        CloudError::Timeout { after, .. } => {
            assert!(after <= Duration::from_millis(300), "{after:?}")
        }
        other => panic!("expected a timeout at the deadline, got {other:?}"),
    }
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn running_out_of_time_reports_the_last_error_not_the_deadline() {
    // Regression: a backoff sleep ending just past the deadline used to hide the real error.
    let server = MockServer::start().await;
    mount_always(&server, ResponseTemplate::new(503)).await;

    let err = client(&server)
        .describe_havips(&[], Instant::now() + Duration::from_millis(100))
        .await
        .unwrap_err();

    assert!(
        matches!(err, CloudError::Http { status: 503, .. }),
        "{err:?}"
    );
    assert!(
        requests(&server).await.len() > 1,
        "retried while there was time"
    );
}

#[tokio::test]
async fn an_attempt_cut_short_by_the_deadline_reports_the_error_before_it() {
    // Regression (eip tests under load): the last retry had a few microseconds left, timed out, and its
    // Timeout replaced the API's answer, which says what is wrong and whether to retry.
    let server = MockServer::start().await;
    mount_once(&server, api_error("RequestLimitExceeded")).await;
    mount_always(
        &server,
        api_error("InternalError").set_delay(Duration::from_secs(5)),
    )
    .await;

    let err = client(&server)
        .describe_havips(&[], Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    assert_eq!(
        requests(&server).await.len(),
        2,
        "retried once, cut at the deadline"
    );
}

#[tokio::test]
async fn a_passed_deadline_sends_nothing() {
    let server = MockServer::start().await;
    mount_always(&server, empty_set()).await;

    let err = client(&server)
        .describe_havips(&[], Instant::now())
        .await
        .unwrap_err();

    assert!(
        matches!(err, CloudError::DeadlineExceeded { .. }),
        "{err:?}"
    );
    assert_eq!(requests(&server).await.len(), 0);
}

fn signature_expire(server_time: &str) -> ResponseTemplate {
    api_error("AuthFailure.SignatureExpire").insert_header("Date", server_time)
}

#[tokio::test]
async fn signature_expire_corrects_the_clock_and_retries_once() {
    let server = MockServer::start().await;
    // The server is one hour ahead of the local (fixed) clock.
    mount_once(&server, signature_expire("Tue, 14 Nov 2023 23:13:20 GMT")).await;
    mount_always(&server, empty_set()).await;
    let (client, rec) = observed(client(&server));

    client
        .describe_havips(&["havip-1".into()], in_secs(10))
        .await
        .unwrap();

    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2, "one retry");
    assert_eq!(
        header_of(&sent[0], "X-TC-Timestamp"),
        Some("1700000000"),
        "first: local clock"
    );
    assert_eq!(
        header_of(&sent[1], "X-TC-Timestamp"),
        Some("1700003600"),
        "retry: server clock"
    );
    assert_eq!(
        rec.codes(),
        vec![Some("AuthFailure.SignatureExpire".into()), None]
    );
    assert_eq!(client.clock_offset(), 3600);

    // The correction is kept, and shared with clones.
    let clone = client.clone();
    clone
        .describe_havips(&["havip-1".into()], in_secs(10))
        .await
        .unwrap();
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 3, "no new SignatureExpire round trip");
    assert_eq!(header_of(&sent[2], "X-TC-Timestamp"), Some("1700003600"));
}

#[tokio::test]
async fn signature_expire_is_retried_only_once() {
    let server = MockServer::start().await;
    mount_always(&server, signature_expire("Tue, 14 Nov 2023 23:13:20 GMT")).await;

    let err = client(&server)
        .describe_havips(&["havip-1".into()], in_secs(10))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Some("AuthFailure.SignatureExpire"));
    assert!(err.is_auth());
    assert_eq!(
        requests(&server).await.len(),
        2,
        "the original and one corrected retry"
    );
}

#[tokio::test]
async fn a_duplicated_association_counts_as_success() {
    let server = MockServer::start().await;
    Mock::given(header("X-TC-Action", "AssociateHaVipInstance"))
        .respond_with(api_error(
            "InvalidParameterValue.DuplicatedHaVipAssociations",
        ))
        .mount(&server)
        .await;
    Mock::given(header("X-TC-Action", "DisassociateHaVipInstance"))
        .respond_with(api_error(
            "InvalidParameterValue.DuplicatedHaVipAssociations",
        ))
        .mount(&server)
        .await;
    let client = client(&server);

    client
        .associate("havip-1", "ins-1", InstanceType::Cvm, in_secs(10))
        .await
        .expect("already associated is success");
    assert_eq!(requests(&server).await.len(), 1, "not retried");

    let err = client
        .disassociate("havip-1", "ins-1", InstanceType::Cvm, in_secs(10))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("InvalidParameterValue.DuplicatedHaVipAssociations"),
        "only Associate swallows it"
    );
}

#[tokio::test]
async fn association_requests_have_the_documented_shape() {
    let server = MockServer::start().await;
    mount_always(&server, ok(json!({}))).await;
    let client = client(&server);

    client
        .associate("havip-1", "ins-1", InstanceType::Cvm, in_secs(10))
        .await
        .unwrap();
    client
        .disassociate("havip-1", "eni-2", InstanceType::Eni, in_secs(10))
        .await
        .unwrap();

    let sent = requests(&server).await;
    assert_eq!(
        header_of(&sent[0], "X-TC-Action"),
        Some("AssociateHaVipInstance")
    );
    assert_eq!(
        sent[0].body_json::<Value>().unwrap(),
        json!({"HaVipAssociationSet": [{"HaVipId": "havip-1", "InstanceId": "ins-1", "InstanceType": "CVM"}]})
    );
    assert_eq!(
        header_of(&sent[1], "X-TC-Action"),
        Some("DisassociateHaVipInstance")
    );
    assert_eq!(
        sent[1].body_json::<Value>().unwrap(),
        json!({"HaVipAssociationSet": [{"HaVipId": "havip-1", "InstanceId": "eni-2", "InstanceType": "ENI"}]})
    );
}

#[tokio::test]
async fn havips_are_decoded_leniently() {
    let server = MockServer::start().await;
    mount_always(
        &server,
        ok(json!({
            "TotalCount": 4,
            "SomethingNew": {"nested": [1, 2]},
            "HaVipSet": [
                {"HaVipId": "havip-a", "HaVipName": "redis", "Vip": "172.16.2.250", "VpcId": "vpc-1",
                 "SubnetId": "subnet-1", "InstanceId": "ins-1", "NetworkInterfaceId": "eni-1", "AddressIp": "",
                 "State": "AVAILABLE", "CheckAssociate": true, "FlushedTime": "2024-05-01 10:00:00",
                 "HaVipAssociationSet": [{"InstanceId": "ins-1", "InstanceType": "CVM", "Extra": true},
                                         {"InstanceId": "ins-2", "InstanceType": "CVM"}],
                 "CdcId": "", "TagSet": [{"Key": "k", "Value": "v"}], "Business": "", "NewField": 42},
                {"HaVipId": "havip-b", "Vip": "172.16.2.251", "InstanceId": "", "NetworkInterfaceId": "",
                 "State": "UNBIND", "FlushedTime": "0000-00-00 00:00:00", "HaVipAssociationSet": null},
                {"HaVipId": "havip-c", "State": "UNBOUND", "CheckAssociate": false},
                {"HaVipId": "havip-d", "State": "MIGRATING"}
            ]
        })),
    )
    .await;

    let got = client(&server)
        .describe_havips(
            &[
                "havip-a".into(),
                "havip-b".into(),
                "havip-c".into(),
                "havip-d".into(),
            ],
            in_secs(10),
        )
        .await
        .unwrap();

    assert_eq!(
        got[0],
        HaVip {
            havip_id: "havip-a".into(),
            name: "redis".into(),
            vip: "172.16.2.250".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            instance_id: Some("ins-1".into()),
            network_interface_id: Some("eni-1".into()),
            address_ip: None,
            state: HaVipState::Available,
            check_associate: true,
            associations: vec![
                HaVipAssociation {
                    instance_id: "ins-1".into(),
                    instance_type: "CVM".into()
                },
                HaVipAssociation {
                    instance_id: "ins-2".into(),
                    instance_type: "CVM".into()
                },
            ],
            flushed_time: Some("2024-05-01 10:00:00".into()),
        }
    );
    assert!(got[0].in_range("ins-2") && !got[0].in_range("ins-3"));
    assert!(!got[0].accepts_garp_from("ins-3"), "range enforced");
    assert_eq!(got[1].instance_id, None, "\"\" means unbound");
    assert_eq!(got[1].network_interface_id, None);
    assert_eq!(
        got[1].flushed_time, None,
        "0000-00-00 00:00:00 means never moved"
    );
    assert_eq!(got[1].associations, vec![]);
    assert_eq!(got[1].state, HaVipState::Unbound, "UNBIND");
    assert_eq!(got[2].state, HaVipState::Unbound, "UNBOUND");
    assert!(!got[2].check_associate);
    assert_eq!(got[3].state, HaVipState::Other("MIGRATING".into()));
    assert!(
        got[3].accepts_garp_from("ins-3"),
        "missing CheckAssociate: not enforced"
    );
}

#[tokio::test]
async fn a_missing_havip_is_a_not_found_error() {
    let server = MockServer::start().await;
    mount_once(&server, empty_set()).await;
    mount_always(&server, api_error("ResourceNotFound")).await;
    let client = client(&server);

    let err = client
        .describe_havip("havip-gone", in_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "HAVIP havip-gone not found in region ap-guangzhou"
    );
    assert!(!err.is_retryable());

    let err = client
        .describe_havip("havip-gone", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CloudError::NotFound { .. }),
        "ResourceNotFound too: {err:?}"
    );
    assert_eq!(err.request_id(), Some("req-err"));
    assert_eq!(
        err.to_string(),
        "HAVIP havip-gone not found in region ap-guangzhou (RequestId req-err)"
    );
}

#[tokio::test]
async fn many_ids_are_asked_in_pages_of_100() {
    let server = MockServer::start().await;
    mount_always(&server, empty_set()).await;
    let ids: Vec<String> = (0..150).map(|i| format!("havip-{i}")).collect();

    client(&server)
        .describe_havips(&ids, in_secs(10))
        .await
        .unwrap();

    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    let first: Value = sent[0].body_json().unwrap();
    let second: Value = sent[1].body_json().unwrap();
    assert_eq!(first["HaVipIds"].as_array().unwrap().len(), 100);
    assert_eq!(second["HaVipIds"].as_array().unwrap().len(), 50);
    assert_eq!(second["HaVipIds"][0], "havip-100");
    assert_eq!(first["Limit"], 100);
}

#[tokio::test]
async fn no_ids_lists_every_havip_page_by_page() {
    let server = MockServer::start().await;
    let page = |from: usize, n: usize| {
        ok(json!({
            "TotalCount": 150,
            "HaVipSet": (from..from + n).map(|i| json!({"HaVipId": format!("havip-{i}")})).collect::<Vec<_>>(),
        }))
    };
    Mock::given(body_partial_json(json!({"Offset": 0})))
        .respond_with(page(0, 100))
        .mount(&server)
        .await;
    Mock::given(body_partial_json(json!({"Offset": 100})))
        .respond_with(page(100, 50))
        .mount(&server)
        .await;

    let all = client(&server)
        .describe_havips(&[], in_secs(10))
        .await
        .unwrap();

    assert_eq!(all.len(), 150);
    assert_eq!(all[149].havip_id, "havip-149");
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    assert!(
        sent[0]
            .body_json::<Value>()
            .unwrap()
            .get("HaVipIds")
            .is_none(),
        "no ids: no HaVipIds"
    );
}

#[tokio::test]
async fn task_results_are_read() {
    let server = MockServer::start().await;
    Mock::given(body_partial_json(json!({"TaskId": "req-1"})))
        .respond_with(ok(json!({"Status": "SUCCESS", "Output": ""})))
        .mount(&server)
        .await;
    Mock::given(body_partial_json(json!({"TaskId": "req-2"})))
        .respond_with(ok(json!({"Status": "FAILED", "Output": "no such ip"})))
        .mount(&server)
        .await;
    let client = client(&server);

    assert_eq!(
        client
            .describe_task_result("req-1", in_secs(10))
            .await
            .unwrap(),
        TaskStatus::Success
    );
    assert_eq!(
        client
            .describe_task_result("req-2", in_secs(10))
            .await
            .unwrap(),
        TaskStatus::Failed {
            output: Some("no such ip".into())
        }
    );
    let sent = requests(&server).await;
    assert_eq!(
        header_of(&sent[0], "X-TC-Action"),
        Some("DescribeVpcTaskResult")
    );
}

#[tokio::test]
async fn the_token_header_is_sent_only_with_a_token() {
    let server = MockServer::start().await;
    mount_always(&server, empty_set()).await;

    client_for(&server.uri(), "2s", true)
        .describe_havips(&[], in_secs(10))
        .await
        .unwrap();
    client_for(&server.uri(), "2s", false)
        .describe_havips(&[], in_secs(10))
        .await
        .unwrap();

    let sent = requests(&server).await;
    assert_eq!(
        header_of(&sent[0], "X-TC-Token"),
        Some(TOKEN),
        "temporary credentials"
    );
    assert_eq!(header_of(&sent[1], "X-TC-Token"), None, "long-term keys");
}

#[tokio::test]
async fn the_bytes_and_headers_sent_are_the_ones_signed() {
    let server = MockServer::start().await;
    mount_always(&server, empty_set()).await;
    let port = server.address().port();

    client_for(&server.uri(), "2s", true)
        .describe_havips(&["havip-9o233uri".into()], in_secs(10))
        .await
        .unwrap();

    let sent = &requests(&server).await[0];
    assert_eq!(
        header_of(sent, "Content-Type"),
        Some("application/json"),
        "no charset, like the SDKs"
    );
    assert_eq!(
        header_of(sent, "Host"),
        Some(format!("127.0.0.1:{port}").as_str()),
        "port included"
    );
    assert_eq!(header_of(sent, "X-TC-Action"), Some("DescribeHaVips"));
    assert_eq!(header_of(sent, "X-TC-Version"), Some("2017-03-12"));
    assert_eq!(header_of(sent, "X-TC-Region"), Some("ap-guangzhou"));
    assert_eq!(header_of(sent, "X-TC-Timestamp"), Some("1700000000"));
    // Re-sign what was received: if the client hashed other bytes, another Content-Type or another host
    // than it sent, the signature would differ.
    let recomputed = tc3::sign(
        &SigningInput {
            method: sent.method.as_str(),
            host: header_of(sent, "Host").unwrap(),
            content_type: header_of(sent, "Content-Type").unwrap(),
            payload: &sent.body,
            service: "vpc",
            action: header_of(sent, "X-TC-Action").unwrap(),
            timestamp: header_of(sent, "X-TC-Timestamp").unwrap().parse().unwrap(),
            sign_action: false,
        },
        SECRET_ID,
        &Secret::new(SECRET_KEY),
    );
    assert_eq!(
        recomputed.hashed_payload,
        tc3::sha256_hex(&sent.body),
        "hashed payload of the body sent"
    );
    assert_eq!(
        header_of(sent, "Authorization"),
        Some(recomputed.authorization.as_str())
    );
    assert_eq!(
        sent.body_json::<Value>().unwrap(),
        json!({"HaVipIds": ["havip-9o233uri"], "Offset": 0, "Limit": 100})
    );
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let server = MockServer::start().await;
    mount_once(&server, api_error("AuthFailure.SignatureFailure")).await;
    mount_once(
        &server,
        ResponseTemplate::new(502).set_body_string("upstream"),
    )
    .await;
    mount_always(
        &server,
        ResponseTemplate::new(200).set_body_string("not json"),
    )
    .await;
    let client = client_for(&server.uri(), "2s", true).with_retry_policy(RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
    });
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = client_for(&format!("http://127.0.0.1:{closed_port}"), "2s", true);

    let mut errors: Vec<CloudError> = Vec::new();
    errors.push(client.describe_havips(&[], in_secs(10)).await.unwrap_err()); // API error
    errors.push(client.describe_havips(&[], in_secs(10)).await.unwrap_err()); // 502, then decode
    errors.push(
        unreachable
            .describe_havips(&[], Instant::now() + Duration::from_millis(200))
            .await
            .unwrap_err(),
    );
    errors.push(
        client
            .describe_havips(&[], Instant::now())
            .await
            .unwrap_err(),
    );

    assert!(
        matches!(errors[0], CloudError::Api { .. }),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(errors[1], CloudError::Decode { .. }),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(errors[2], CloudError::Transport { .. }),
        "{:?}",
        errors[2]
    );
    for e in &errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cr3t"), "a secret in an error: {text}");
    }
    let debug = format!("{client:?}");
    assert!(
        !debug.contains("s3cr3t"),
        "a secret in the client's Debug: {debug}"
    );
}

#[tokio::test]
async fn unusable_settings_are_refused_with_the_key() {
    for (endpoint, problem) in [
        ("ftp://vpc.tencentcloudapi.com", "http:// or https://"),
        ("https://vpc.tencentcloudapi.com/v3", "no path"),
        ("https://vpc.tencentcloudapi.com/?a=b", "no path or query"),
        ("vpc.tencentcloudapi.com", "not a URL"),
    ] {
        let err = VpcClient::new(
            &cloud_config(endpoint, "1s"),
            credentials(false),
            fixed_clock(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cloud.endpoint: ") && text.contains(problem),
            "{endpoint}: {text}"
        );
    }
    let err = VpcClient::new(
        &cloud_config("https://x", "0s"),
        credentials(false),
        fixed_clock(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("cloud.timeout: "), "{err}");
}

// ---- against the fake cloud ----

use havip_testkit::fake::front::{FakeFront, FrontOptions};
use havip_testkit::fake::{FakeCloud, Fault, FaultKind, HavipSpec};

/// A fake with the test key and HAVIPs `havip-00000000` .. `havip-0000000<n-1>`, unbound.
async fn fake_with(n: usize) -> FakeCloud {
    let fake = FakeCloud::start().await;
    fake.add_key(SECRET_ID, SECRET_KEY);
    for i in 0..n {
        fake.add_havip(HavipSpec::new(
            havip_id(i),
            std::net::Ipv4Addr::new(198, 18, 0, 10 + i as u8),
        ));
    }
    fake
}

fn havip_id(i: usize) -> String {
    format!("havip-{i:08}")
}

/// A client of `endpoint` on the system clock (the fake checks timestamps against its own clock).
fn live_client(endpoint: &str, extra: &str) -> VpcClient {
    let cloud: CloudConfig = toml::from_str(&format!(
        "region = \"ap-guangzhou\"\nendpoint = \"{endpoint}\"\ntimeout = \"2s\"\n{extra}"
    ))
    .unwrap();
    VpcClient::new(&cloud, credentials(false), havip_agent::clock::system())
        .unwrap()
        .with_retry_policy(FAST)
}

fn answered(fake: &FakeCloud, action: &str, code: Option<&str>) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.action == action && r.error_code.as_deref() == code)
        .count()
}

#[tokio::test]
async fn two_service_unavailable_answers_then_success_is_a_success_within_the_deadline() {
    let fake = fake_with(1).await;
    fake.inject(Fault::service_unavailable("DescribeHaVips").times(2));
    let client = live_client(&fake.endpoint(), "");

    let havip = client
        .describe_havip(&havip_id(0), in_secs(5))
        .await
        .expect("ServiceUnavailable is transient: retried until it succeeds");

    assert_eq!(havip.havip_id, havip_id(0));
    assert_eq!(
        answered(&fake, "DescribeHaVips", Some("ServiceUnavailable")),
        2
    );
    assert_eq!(answered(&fake, "DescribeHaVips", None), 1);
}

#[tokio::test]
async fn action_locked_is_retried_until_the_deadline_and_stays_retryable() {
    let fake = fake_with(1).await;
    fake.inject(Fault::action_locked("AssociateHaVipInstance"));
    let client = live_client(&fake.endpoint(), "");

    let err = client
        .associate(
            &havip_id(0),
            "ins-a",
            InstanceType::Cvm,
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .unwrap_err();

    // Retryable is what makes `migrate-havip` exit 1 (Sentinel retries) rather than 2.
    assert_eq!(err.code(), Some("ActionLocked"), "{err:?}");
    assert!(err.is_retryable());
    assert!(answered(&fake, "AssociateHaVipInstance", Some("ActionLocked")) > 1);
}

#[tokio::test]
async fn a_disassociate_of_a_pair_already_gone_counts_as_done() {
    let fake = fake_with(1).await;
    let client = live_client(&fake.endpoint(), "");

    // The fake answers ResourceNotFound: the pair is not in the drift range.
    client
        .disassociate(&havip_id(0), "ins-a", InstanceType::Cvm, in_secs(5))
        .await
        .expect("already gone is done");
    assert_eq!(
        answered(&fake, "DisassociateHaVipInstance", Some("ResourceNotFound")),
        1,
        "asked once, not retried"
    );

    // Only for disassociate: associating with a HAVIP that does not exist is a failure.
    let err = client
        .associate("havip-deadbeef", "ins-a", InstanceType::Cvm, in_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFound"), "{err:?}");
}

#[tokio::test]
async fn the_endpoint_defaults_to_the_regional_host_and_a_zero_rate_limit_is_refused() {
    let cloud: CloudConfig = toml::from_str("region = \"ap-shenzhen-fsi\"\n").unwrap();
    let client = VpcClient::new(&cloud, credentials(false), fixed_clock()).unwrap();
    assert_eq!(
        client.endpoint(),
        "https://vpc.ap-shenzhen-fsi.tencentcloudapi.com/"
    );

    let cloud: CloudConfig = toml::from_str("region = \"evil.example/x\"\n").unwrap();
    let err = VpcClient::new(&cloud, credentials(false), fixed_clock()).unwrap_err();
    assert!(err.to_string().starts_with("cloud.region: "), "{err}");

    let cloud: CloudConfig = toml::from_str("region = \"ap-guangzhou\"\nrate_limit = 0\n").unwrap();
    let err = VpcClient::new(&cloud, credentials(false), fixed_clock()).unwrap_err();
    assert!(err.to_string().starts_with("cloud.rate_limit: "), "{err}");
}

/// Sends of `action` that fell in one second of each other, at most: the fake's view of the client's rate.
fn busiest_second(fake: &FakeCloud, action: &str) -> usize {
    let at: Vec<SystemTime> = fake
        .requests()
        .iter()
        .filter(|r| r.action == action)
        .map(|r| r.at)
        .collect();
    at.iter()
        .map(|start| {
            at.iter()
                .filter(|t| {
                    t.duration_since(*start)
                        .is_ok_and(|d| d < Duration::from_secs(1))
                })
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn requests_over_the_rate_limit_wait_instead_of_failing() {
    // 35 calls at once against the fake's documented 20/s: the client's limiter holds them to its rate
    // (10/s here, half the fake's, so that a loaded test machine delaying one burst's arrival cannot
    // squeeze two bursts into one of the fake's seconds), nobody fails and the fake never has to refuse.
    // Without the limiter, 15 of the first 35 would be refused.
    let fake = fake_with(1).await;
    let client = live_client(&fake.endpoint(), "rate_limit = 10\n");

    let ids = [havip_id(0)];
    let calls = (0..35).map(|_| client.describe_havips(&ids, in_secs(20)));
    let results = futures::future::join_all(calls).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(answered(&fake, "DescribeHaVips", None), 35);
    assert_eq!(
        answered(&fake, "DescribeHaVips", Some("RequestLimitExceeded")),
        0
    );
    assert!(busiest_second(&fake, "DescribeHaVips") <= 20);
}

#[tokio::test]
async fn the_fake_refuses_requests_past_its_limit_and_the_client_retries_them() {
    // A client allowed more than the fake: the fake's limit answers RequestLimitExceeded, which the client
    // retries within the deadline.
    let fake = fake_with(1).await;
    let client = live_client(&fake.endpoint(), "rate_limit = 1000\n");
    let ids = [havip_id(0)];

    let calls = (0..30).map(|_| client.describe_havips(&ids, in_secs(10)));
    let results = futures::future::join_all(calls).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(answered(&fake, "DescribeHaVips", Some("RequestLimitExceeded")) > 0);
    assert_eq!(answered(&fake, "DescribeHaVips", None), 30);

    // And it can be turned off.
    fake.set_rate_limit(None);
    fake.clear_requests();
    let calls = (0..30).map(|_| client.describe_havips(&ids, in_secs(10)));
    futures::future::join_all(calls).await;
    assert_eq!(
        answered(&fake, "DescribeHaVips", Some("RequestLimitExceeded")),
        0
    );
}

#[tokio::test]
async fn a_rate_limit_slot_past_the_deadline_fails_without_sending() {
    let fake = fake_with(1).await;
    let client = live_client(&fake.endpoint(), "rate_limit = 1\n");
    client
        .describe_havips(&[havip_id(0)], in_secs(5))
        .await
        .unwrap();

    // The next slot is a second away; this caller has 200 ms.
    let err = client
        .describe_havips(&[havip_id(0)], Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();

    assert!(
        matches!(err, CloudError::DeadlineExceeded { .. }),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1, "nothing sent past the limit");
}

/// Polls until the fake has seen `n` requests of `action` (the first call is then in flight).
async fn until_seen(fake: &FakeCloud, action: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake
        .requests()
        .iter()
        .filter(|r| r.action == action)
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "{action} never reached the fake");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `call`, the first `action` request, and holds it in flight for 300 ms (once), so that the callers
/// after it queue into one batch. Returns its task once the fake has the request.
async fn first_in_flight<T: Send + 'static>(
    fake: &FakeCloud,
    action: &str,
    call: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    fake.inject(Fault::on(action, FaultKind::Delay(Duration::from_millis(300))).times(1));
    let first = tokio::spawn(call);
    until_seen(fake, action, 1).await;
    first
}

#[tokio::test]
async fn concurrent_describes_while_one_is_in_flight_go_out_as_one_request() {
    let fake = fake_with(10).await;
    let client = live_client(&fake.endpoint(), "");

    let first = first_in_flight(&fake, "DescribeHaVips", {
        let client = client.clone();
        async move { client.describe_havip(&havip_id(0), in_secs(5)).await }
    })
    .await;
    let rest = futures::future::join_all((1..10).map(|i| {
        let client = client.clone();
        async move { (i, client.describe_havip(&havip_id(i), in_secs(5)).await) }
    }))
    .await;

    assert_eq!(first.await.unwrap().unwrap().havip_id, havip_id(0));
    for (i, result) in rest {
        assert_eq!(
            result.unwrap().havip_id,
            havip_id(i),
            "caller {i} gets its own HAVIP"
        );
    }
    let describes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.action == "DescribeHaVips")
        .collect();
    assert_eq!(describes.len(), 2, "the lone first call, then one batch");
    assert_eq!(describes[0].body["HaVipIds"], json!([havip_id(0)]));
    let mut batched: Vec<String> = describes[1].body["HaVipIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    batched.sort();
    assert_eq!(batched, (1..10).map(havip_id).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batched_describe_with_an_unknown_id_still_answers_each_caller() {
    let fake = fake_with(2).await;
    let client = live_client(&fake.endpoint(), "");
    let first = first_in_flight(&fake, "DescribeHaVips", {
        let client = client.clone();
        async move { client.describe_havip(&havip_id(0), in_secs(5)).await }
    })
    .await;

    // One malformed id makes the API refuse the whole batch: each id is then asked on its own.
    let id1 = havip_id(1);
    let (known, malformed, missing) = tokio::join!(
        client.describe_havip(&id1, in_secs(5)),
        client.describe_havip("vip-malformed", in_secs(5)),
        client.describe_havip("havip-deadbeef", in_secs(5)),
    );

    first.await.unwrap().unwrap();
    assert_eq!(known.unwrap().havip_id, havip_id(1));
    assert_eq!(
        malformed.unwrap_err().code(),
        Some("InvalidParameterValue.Malformed")
    );
    assert!(
        matches!(missing, Err(CloudError::NotFound { .. })),
        "{missing:?}"
    );
}

/// A fake whose every request naming `havip_id(0)` is answered only after 30 s (the client gives up on an
/// attempt after 2 s, see `live_client`).
async fn fake_hanging_on_the_first_of(n: usize) -> FakeCloud {
    let fake = fake_with(n).await;
    fake.inject(Fault::always(FaultKind::Delay(Duration::from_secs(30))).for_havip(havip_id(0)));
    fake
}

/// Asserts that `slow` is still waiting for its hanging HAVIP, then stops it.
fn still_waiting<T>(slow: tokio::task::JoinHandle<T>) {
    assert!(
        !slow.is_finished(),
        "the hanging HAVIP's call ended early, so this proves nothing"
    );
    slow.abort();
}

#[tokio::test]
async fn a_describe_hanging_in_flight_never_holds_up_another_havips_describe() {
    let fake = fake_hanging_on_the_first_of(2).await;
    let client = live_client(&fake.endpoint(), "");
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.describe_havip(&havip_id(0), in_secs(20)).await }
    });
    until_seen(&fake, "DescribeHaVips", 1).await;

    // The other HAVIP's caller arrives while the hanging request is in flight and is answered within its
    // own deadline, long before the hanging caller's.
    let fast = client.describe_havip(&havip_id(1), in_secs(8)).await;

    assert_eq!(
        fast.expect("the other HAVIP is answered").havip_id,
        havip_id(1)
    );
    still_waiting(slow);
}

#[tokio::test]
async fn a_hanging_havip_batched_with_another_never_fails_the_other() {
    let fake = fake_hanging_on_the_first_of(3).await;
    let client = live_client(&fake.endpoint(), "");
    let first = first_in_flight(&fake, "DescribeHaVips", {
        let client = client.clone();
        async move { client.describe_havip(&havip_id(2), in_secs(5)).await }
    })
    .await;
    // Both queue behind the first and go out as one batch, which hangs because of HAVIP 0.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.describe_havip(&havip_id(0), in_secs(20)).await }
    });
    let fast = client.describe_havip(&havip_id(1), in_secs(8)).await;

    first.await.unwrap().unwrap();
    assert_eq!(
        fast.expect("the other HAVIP is answered").havip_id,
        havip_id(1)
    );
    let batched = fake.requests().iter().any(|r| {
        r.action == "DescribeHaVips" && r.body["HaVipIds"].as_array().is_some_and(|a| a.len() == 2)
    });
    assert!(
        batched,
        "the two callers were never batched, so this proves nothing"
    );
    still_waiting(slow);
}

#[tokio::test]
async fn a_havip_that_hung_once_is_asked_alone_so_short_polls_of_another_succeed() {
    // Two claims polling in step with short deadlines (as a claim confirms a move): the hanging HAVIP's
    // poll is in flight whenever the other's arrives. After the first round has shown which HAVIP hangs,
    // the other's polls no longer wait behind it or share its requests.
    let fake = fake_hanging_on_the_first_of(2).await;
    let client = live_client(&fake.endpoint(), "");
    let poll = Duration::from_millis(1500);
    let mut fast_results = Vec::new();
    for round in 0..4 {
        let slow = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .describe_havip(&havip_id(0), Instant::now() + poll)
                    .await
            }
        });
        until_seen(&fake, "DescribeHaVips", round + 1).await;
        let fast = client
            .describe_havip(&havip_id(1), Instant::now() + poll)
            .await;
        assert!(
            slow.await.unwrap().is_err(),
            "round {round}: the hanging HAVIP cannot be answered"
        );
        fast_results.push(fast.map(|h| h.havip_id));
    }
    for (round, r) in fast_results.iter().enumerate().skip(1) {
        assert_eq!(
            r.as_deref().ok(),
            Some(havip_id(1).as_str()),
            "round {round}: {fast_results:?}"
        );
    }
}

#[tokio::test]
async fn an_association_hanging_in_flight_or_in_a_batch_never_fails_another_havips() {
    let fake = fake_hanging_on_the_first_of(3).await;
    let client = live_client(&fake.endpoint(), "");
    let associate = |i: usize, secs: u64| {
        let client = client.clone();
        async move {
            client
                .associate(&havip_id(i), "ins-a", InstanceType::Cvm, in_secs(secs))
                .await
        }
    };
    let slow = tokio::spawn(associate(0, 20));
    until_seen(&fake, "AssociateHaVipInstance", 1).await;

    // Two callers while the hanging one is in flight: they may go out together or with the next hanging
    // attempt; either way each is answered within its own deadline.
    let (one, two) = tokio::join!(associate(1, 8), associate(2, 8));

    assert!(one.is_ok() && two.is_ok(), "{one:?} {two:?}");
    assert!(fake.havip(&havip_id(1)).unwrap().in_range("ins-a"));
    assert!(fake.havip(&havip_id(2)).unwrap().in_range("ins-a"));
    still_waiting(slow);
}

#[tokio::test]
async fn concurrent_associations_batch_and_a_duplicate_does_not_fail_the_others() {
    let fake = FakeCloud::start().await;
    fake.add_key(SECRET_ID, SECRET_KEY);
    for i in 0..6 {
        let mut spec = HavipSpec::new(
            havip_id(i),
            std::net::Ipv4Addr::new(198, 18, 0, 10 + i as u8),
        );
        if i == 3 {
            spec = spec.associate("ins-a");
        }
        fake.add_havip(spec);
    }
    let client = live_client(&fake.endpoint(), "");
    let associate = |i: usize| {
        let client = client.clone();
        async move {
            client
                .associate(&havip_id(i), "ins-a", InstanceType::Cvm, in_secs(5))
                .await
        }
    };

    let first = first_in_flight(&fake, "AssociateHaVipInstance", associate(0)).await;
    // Four queued callers; HAVIP 3 already has ins-a in its range.
    let rest = futures::future::join_all((1..5).map(associate)).await;

    first.await.unwrap().unwrap();
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    for i in 0..5 {
        assert!(
            fake.havip(&havip_id(i)).unwrap().in_range("ins-a"),
            "havip {i}"
        );
    }
    let writes = fake.write_requests();
    assert_eq!(
        writes.len(),
        1 + 1 + 4,
        "first alone, the batch of four refused as a whole, then each of the four: {writes:?}"
    );
    assert_eq!(
        writes[1].body["HaVipAssociationSet"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        writes[1].error_code.as_deref(),
        Some("InvalidParameterValue.DuplicatedHaVipAssociations")
    );

    // Without a duplicate the batch simply succeeds: one request for the queued callers.
    fake.clear_requests();
    let disassociate = |i: usize| {
        let client = client.clone();
        async move {
            client
                .disassociate(&havip_id(i), "ins-a", InstanceType::Cvm, in_secs(5))
                .await
        }
    };
    let first = first_in_flight(&fake, "DisassociateHaVipInstance", disassociate(0)).await;
    let rest = futures::future::join_all((1..5).map(disassociate)).await;
    first.await.unwrap().unwrap();
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    assert_eq!(
        fake.write_requests().len(),
        2,
        "{:?}",
        fake.write_requests()
    );
}

/// A fake behind a front: new connections pay 0 ms (the count is what matters here), idle ones close
/// after 1 s.
const IDLE_CLOSE: Duration = Duration::from_secs(1);

async fn fronted() -> (FakeCloud, FakeFront) {
    let fake = fake_with(1).await;
    let front = FakeFront::start(
        fake.address(),
        FrontOptions {
            handshake_delay: Duration::ZERO,
            idle_close: Some(IDLE_CLOSE),
        },
    )
    .await
    .unwrap();
    (fake, front)
}

#[tokio::test]
async fn keep_warm_keeps_the_connection_through_an_idle_spell() {
    let (_fake, front) = fronted().await;
    let client = live_client(&front.endpoint(), "");
    client
        .describe_havip(&havip_id(0), in_secs(5))
        .await
        .unwrap();
    assert_eq!(front.connections(), 1);

    // Touches every 200 ms: far enough under the idle close to survive a loaded test machine.
    let _warm = client.spawn_keep_warm(Duration::from_millis(200));
    // An idle spell three times the server's idle timeout (the scenario itself, not a wait for a result).
    // Half an interval off the touches: a call made while a touch holds the connection (HTTP/1.1, one
    // request at a time) would open a second one.
    tokio::time::sleep(IDLE_CLOSE * 3 + Duration::from_millis(100)).await;
    client
        .describe_havip(&havip_id(0), in_secs(5))
        .await
        .unwrap();

    assert_eq!(
        front.connections(),
        1,
        "the first connection was still open"
    );
}

#[tokio::test]
async fn without_keep_warm_an_idle_spell_costs_a_new_connection() {
    // The control for the test above: the front does close idle connections.
    let (_fake, front) = fronted().await;
    let client = live_client(&front.endpoint(), "");
    client
        .describe_havip(&havip_id(0), in_secs(5))
        .await
        .unwrap();

    tokio::time::sleep(IDLE_CLOSE * 3).await;
    client
        .describe_havip(&havip_id(0), in_secs(5))
        .await
        .unwrap();

    assert_eq!(front.connections(), 2);
}

#[tokio::test]
async fn keep_warm_touches_are_probes_not_api_requests() {
    let fake = fake_with(1).await;
    let client = live_client(&fake.endpoint(), "");

    client.touch().await;
    client.touch().await;

    assert_eq!(fake.probes(), 2);
    assert!(
        fake.requests().is_empty(),
        "not an API request, and nothing for the rate limit to count"
    );
}
