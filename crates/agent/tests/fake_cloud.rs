//! The fake VPC API over real HTTP: shape of the answers, drift range, holder moves, faults, the request
//! log and signature checks. Requests are signed by a small signer written here, not by `havip_agent::tc3`.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use havip_agent::config::InstanceType as NodeType;
use havip_testkit::fake::{
    Association, FakeCloud, Fault, FaultKind, GarpOutcome, HavipSpec, InstanceType, ServerTime,
    eni_id_for, vpc::INVALID_REGION_CODE, vpc::PRIMARY_ENI_CODE,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ID: &str = "AKIDfaketest";
const KEY: &str = "fake-test-secret-key";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// TC3-HMAC-SHA256 as the reference describes it, signing `content-type;host`.
fn authorization(
    id: &str,
    key: &str,
    host: &str,
    content_type: &str,
    body: &[u8],
    ts: i64,
) -> String {
    let date = chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let canonical = format!(
        "POST\n/\n\ncontent-type:{content_type}\nhost:{host}\n\ncontent-type;host\n{}",
        hex::encode(Sha256::digest(body))
    );
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{ts}\n{date}/vpc/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("TC3{key}").as_bytes(), date.as_bytes());
    let k = hmac(&k, b"vpc");
    let k = hmac(&k, b"tc3_request");
    let sig = hex::encode(hmac(&k, to_sign.as_bytes()));
    format!(
        "TC3-HMAC-SHA256 Credential={id}/{date}/vpc/tc3_request, SignedHeaders=content-type;host, Signature={sig}"
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[derive(Clone)]
struct Call {
    id: String,
    key: String,
    token: Option<String>,
    timestamp: Option<i64>,
    signed_content_type: String,
    sent_content_type: String,
    host: Option<String>,
    timeout: Duration,
    region: String,
}

impl Default for Call {
    fn default() -> Self {
        Self {
            id: ID.into(),
            key: KEY.into(),
            token: None,
            timestamp: None,
            signed_content_type: "application/json".into(),
            sent_content_type: "application/json".into(),
            host: None,
            timeout: Duration::from_secs(10),
            region: "ap-guangzhou".into(),
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    date: Option<String>,
    json: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> Option<&str> {
        self.json["Response"]["Error"]["Code"].as_str()
    }

    fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert!(self.code().is_none(), "expected success, got {self:?}");
        &self.json["Response"]
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

async fn try_call(
    fake: &FakeCloud,
    action: &str,
    body: &Value,
    c: &Call,
) -> Result<Answer, reqwest::Error> {
    let bytes = serde_json::to_vec(body).unwrap();
    let url = reqwest::Url::parse(&fake.endpoint()).unwrap();
    let host = c
        .host
        .clone()
        .unwrap_or_else(|| format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()));
    let ts = c.timestamp.unwrap_or_else(now);
    let mut req = client()
        .post(url)
        .timeout(c.timeout)
        .header("Host", &host)
        .header("Content-Type", &c.sent_content_type)
        .header("X-TC-Action", action)
        .header("X-TC-Timestamp", ts.to_string())
        .header("X-TC-Version", "2017-03-12")
        .header("X-TC-Region", &c.region)
        .header(
            "Authorization",
            authorization(&c.id, &c.key, &host, &c.signed_content_type, &bytes, ts),
        )
        .body(bytes);
    if let Some(t) = &c.token {
        req = req.header("X-TC-Token", t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let date = resp
        .headers()
        .get("date")
        .map(|d| d.to_str().unwrap().to_owned());
    let text = resp.text().await?;
    Ok(Answer {
        status,
        date,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}

async fn call(fake: &FakeCloud, action: &str, body: Value) -> Answer {
    call_with(fake, action, body, &Call::default()).await
}

async fn call_with(fake: &FakeCloud, action: &str, body: Value, c: &Call) -> Answer {
    let a = try_call(fake, action, &body, c)
        .await
        .expect("transport error");
    assert!(
        a.date.is_some(),
        "every answer carries a Date header: {a:?}"
    );
    a
}

fn assoc(havip: &str, instance: &str, ty: &str) -> Value {
    json!({"HaVipId": havip, "InstanceId": instance, "InstanceType": ty})
}

/// A fake with one key, three instances (a, b in range; c not) and one HAVIP held by a.
async fn fake() -> FakeCloud {
    let fake = FakeCloud::start().await;
    fake.add_key(ID, KEY);
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_instance("ins-bbbbbbbb", MAC_B);
    fake.add_instance("ins-cccccccc", MAC_C);
    fake.add_havip(
        HavipSpec::new("havip-00000001", VIP)
            .check_associate(true)
            .associate("ins-aaaaaaaa")
            .associate("ins-bbbbbbbb")
            .holder("ins-aaaaaaaa"),
    );
    fake
}

#[tokio::test]
async fn describe_returns_the_real_field_names() {
    let fake = fake().await;

    let a = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"]}),
    )
    .await;

    let r = a.ok();
    assert_eq!(r["TotalCount"], 1);
    let h = &r["HaVipSet"][0];
    assert_eq!(h["HaVipId"], "havip-00000001");
    assert_eq!(h["Vip"], "198.18.0.100");
    assert_eq!(h["InstanceId"], "ins-aaaaaaaa");
    assert_eq!(h["NetworkInterfaceId"], eni_id_for("ins-aaaaaaaa"));
    assert_eq!(h["State"], "AVAILABLE");
    assert_eq!(h["CheckAssociate"], true);
    assert_eq!(h["FlushedTime"], "0000-00-00 00:00:00");
    for field in [
        "HaVipName",
        "VpcId",
        "SubnetId",
        "AddressIp",
        "CreatedTime",
        "Business",
    ] {
        assert!(h[field].is_string(), "{field} missing: {h}");
    }
    assert_eq!(
        h["HaVipAssociationSet"],
        json!([
            {"HaVipId": "havip-00000001", "InstanceId": "ins-aaaaaaaa", "InstanceType": "CVM"},
            {"HaVipId": "havip-00000001", "InstanceId": "ins-bbbbbbbb", "InstanceType": "CVM"},
        ])
    );
    assert!(
        h.as_object().unwrap().contains_key("FakeFutureField"),
        "an unknown field keeps clients honest"
    );
    let rid = r["RequestId"].as_str().unwrap();
    assert_eq!(
        rid.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{rid}"
    );
}

#[tokio::test]
async fn describe_filters_and_pages() {
    let fake = fake().await;
    fake.add_havip(
        HavipSpec::new("havip-00000002", Ipv4Addr::new(198, 18, 0, 101)).check_associate(true),
    );
    fake.add_havip(
        HavipSpec::new("havip-00000003", Ipv4Addr::new(198, 18, 0, 102))
            .check_associate(true)
            .associate("ins-bbbbbbbb"),
    );

    let ids = |a: &Answer| -> Vec<String> {
        a.ok()["HaVipSet"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["HaVipId"].as_str().unwrap().to_owned())
            .collect()
    };
    let by_vip = call(
        &fake,
        "DescribeHaVips",
        json!({"Filters": [{"Name": "vip", "Values": ["198.18.0.101"]}]}),
    )
    .await;
    assert_eq!(ids(&by_vip), ["havip-00000002"]);
    let by_member = call(
        &fake,
        "DescribeHaVips",
        json!({"Filters": [{"Name": "havip-association.instance-id", "Values": ["ins-bbbbbbbb"]}]}),
    )
    .await;
    assert_eq!(ids(&by_member), ["havip-00000001", "havip-00000003"]);
    let page = call(&fake, "DescribeHaVips", json!({"Offset": 1, "Limit": 1})).await;
    assert_eq!(ids(&page), ["havip-00000002"]);
    assert_eq!(page.ok()["TotalCount"], 3);
    let absent = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-ffffffff"]}),
    )
    .await;
    assert_eq!(absent.ok()["TotalCount"], 0);

    let both = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"], "Filters": []}),
    )
    .await;
    assert_eq!(both.code(), Some("InvalidParameter.Coexist"));
    let too_many = call(&fake, "DescribeHaVips", json!({"Limit": 101})).await;
    assert_eq!(too_many.code(), Some("InvalidParameterValue.Range"));
    let bad_filter = call(
        &fake,
        "DescribeHaVips",
        json!({"Filters": [{"Name": "state", "Values": ["AVAILABLE"]}]}),
    )
    .await;
    assert_eq!(bad_filter.code(), Some("InvalidParameter.FilterInvalidKey"));
    let unknown_param = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipId": "havip-00000001"}),
    )
    .await;
    assert_eq!(unknown_param.code(), Some("UnknownParameter"));
    let malformed = call(&fake, "DescribeHaVips", json!({"HaVipIds": ["vip-1"]})).await;
    assert_eq!(malformed.code(), Some("InvalidParameterValue.Malformed"));
}

#[tokio::test]
async fn associate_then_duplicate_then_disassociate() {
    let fake = fake().await;
    let set = json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]});

    let first = call(&fake, "AssociateHaVipInstance", set.clone()).await;
    let task = first.ok()["RequestId"].as_str().unwrap().to_owned();
    let again = call(&fake, "AssociateHaVipInstance", set.clone()).await;

    assert_eq!(again.status, 200, "errors come with HTTP 200");
    assert_eq!(
        again.code(),
        Some("InvalidParameterValue.DuplicatedHaVipAssociations")
    );
    assert!(again.json["Response"]["RequestId"].is_string());
    assert!(again.json["Response"]["Error"]["Message"].is_string());
    let snap = fake.havip("havip-00000001").unwrap();
    assert!(
        snap.associations
            .contains(&Association::cvm("ins-cccccccc"))
    );
    assert!(snap.in_range("ins-cccccccc"));

    let status = call(&fake, "DescribeVpcTaskResult", json!({"TaskId": task})).await;
    assert_eq!(status.ok()["Status"], "SUCCESS");
    let unknown_task = call(
        &fake,
        "DescribeVpcTaskResult",
        json!({"TaskId": "no-such-task"}),
    )
    .await;
    assert_eq!(unknown_task.code(), Some("ResourceNotFound"));

    call(&fake, "DisassociateHaVipInstance", set.clone())
        .await
        .ok();
    assert!(
        !fake
            .havip("havip-00000001")
            .unwrap()
            .in_range("ins-cccccccc")
    );
    let gone = call(&fake, "DisassociateHaVipInstance", set).await;
    assert_eq!(gone.code(), Some("ResourceNotFound"));
}

#[tokio::test]
async fn associate_refuses_bad_requests_without_changing_anything() {
    let fake = fake().await;
    let before = fake.havip("havip-00000001").unwrap();

    let unknown = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-ffffffff", "ins-cccccccc", "CVM")]}),
    )
    .await;
    assert_eq!(unknown.code(), Some("ResourceNotFound"));

    let mixed = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000001", "eni-12345678", "ENI")]}),
    )
    .await;
    assert_eq!(mixed.code(), Some("InvalidParameterValue"));
    assert!(
        mixed.json["Response"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("both CVM and ENI")
    );

    let eleven: Vec<Value> = (0..11)
        .map(|i| assoc("havip-00000001", &format!("ins-{i:08}"), "CVM"))
        .collect();
    let too_many = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": eleven}),
    )
    .await;
    assert_eq!(too_many.code(), Some("InvalidParameterValue.LimitExceeded"));

    // The second item is bad: the first must not be applied either.
    let half = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [
            assoc("havip-00000001", "ins-cccccccc", "CVM"),
            assoc("havip-00000001", "ins-aaaaaaaa", "CVM"),
        ]}),
    )
    .await;
    assert_eq!(
        half.code(),
        Some("InvalidParameterValue.DuplicatedHaVipAssociations")
    );

    let action = call(&fake, "AssociateHaVip", json!({})).await;
    assert_eq!(action.code(), Some("InvalidAction"));
    assert_eq!(fake.havip("havip-00000001").unwrap(), before);
}

#[tokio::test]
async fn garp_moves_the_holder_only_from_an_in_range_instance() {
    let fake = fake().await;

    let outside = fake.garp(MAC_C, VIP);
    assert_eq!(
        outside,
        GarpOutcome::NotInRange {
            havip_id: "havip-00000001".into(),
            instance_id: "ins-cccccccc".into()
        }
    );
    assert_eq!(
        fake.havip("havip-00000001").unwrap().instance_id.as_deref(),
        Some("ins-aaaaaaaa")
    );
    assert_eq!(
        fake.garp([2, 0, 0, 0, 0, 0xee], VIP),
        GarpOutcome::UnknownMac
    );
    assert_eq!(
        fake.garp(MAC_B, Ipv4Addr::new(198, 18, 0, 200)),
        GarpOutcome::UnknownVip
    );

    let moved = fake.garp(MAC_B, VIP);

    assert_eq!(
        moved,
        GarpOutcome::Moved {
            havip_id: "havip-00000001".into(),
            from: Some("ins-aaaaaaaa".into()),
            to: "ins-bbbbbbbb".into()
        }
    );
    assert!(matches!(
        fake.garp(MAC_B, VIP),
        GarpOutcome::AlreadyHolder { .. }
    ));
    let h = &call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"]}),
    )
    .await
    .ok()["HaVipSet"][0]
        .clone();
    assert_eq!(h["InstanceId"], "ins-bbbbbbbb");
    assert_eq!(h["NetworkInterfaceId"], eni_id_for("ins-bbbbbbbb"));
    assert_ne!(h["FlushedTime"], "0000-00-00 00:00:00");
    assert_eq!(h["State"], "AVAILABLE");
    assert_eq!(fake.moves().len(), 1);

    fake.set_check_associate("havip-00000001", false);
    assert!(
        fake.garp(MAC_C, VIP).moved(),
        "without CheckAssociate any instance may take the VIP"
    );
}

#[tokio::test]
async fn an_eni_entry_puts_its_instance_in_range() {
    let fake = FakeCloud::start().await;
    fake.add_instance("ins-dddddddd", MAC_A);
    fake.add_havip(
        HavipSpec::new("havip-00000009", VIP)
            .check_associate(true)
            .associate_eni(eni_id_for("ins-dddddddd")),
    );

    assert!(fake.garp(MAC_A, VIP).moved());
    let snap = fake.havip("havip-00000009").unwrap();
    assert_eq!(snap.associations[0].instance_type, InstanceType::Eni);
    assert_eq!(snap.network_interface_id, Some(eni_id_for("ins-dddddddd")));
}

#[tokio::test]
async fn api_error_and_throttle_faults_answer_with_their_codes_and_change_nothing() {
    let fake = fake().await;
    fake.inject(
        Fault::on(
            "AssociateHaVipInstance",
            FaultKind::ApiError {
                code: "UnsupportedOperation.MutexOperationTaskRunning".into(),
                message: "another task is running".into(),
            },
        )
        .times(1),
    );
    fake.inject(Fault::on("AssociateHaVipInstance", FaultKind::Throttle).times(1));
    let set = json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]});

    let described = call(&fake, "DescribeHaVips", json!({})).await;
    let first = call(&fake, "AssociateHaVipInstance", set.clone()).await;
    let second = call(&fake, "AssociateHaVipInstance", set.clone()).await;
    let changed_nothing = !fake
        .havip("havip-00000001")
        .unwrap()
        .in_range("ins-cccccccc");
    let third = call(&fake, "AssociateHaVipInstance", set).await;

    described.ok();
    assert_eq!(
        first.code(),
        Some("UnsupportedOperation.MutexOperationTaskRunning")
    );
    assert_eq!(second.code(), Some("RequestLimitExceeded"));
    assert!(changed_nothing);
    third.ok();
    let log = fake.requests();
    assert_eq!(
        log[1]
            .fault
            .as_ref()
            .map(|f| matches!(f, FaultKind::ApiError { .. })),
        Some(true)
    );
    assert_eq!(log[2].fault, Some(FaultKind::Throttle));
    assert_eq!(log[3].fault, None);
}

#[tokio::test]
async fn http_fault_answers_a_non_json_status_until_cleared() {
    let fake = fake().await;
    fake.inject(Fault::always(FaultKind::Http(502)));

    let a = call(&fake, "DescribeHaVips", json!({})).await;
    let b = call(&fake, "DescribeHaVips", json!({})).await;
    fake.clear_faults();
    let c = call(&fake, "DescribeHaVips", json!({})).await;

    assert_eq!((a.status, b.status), (502, 502));
    assert!(a.json.is_null(), "a gateway error is not JSON: {}", a.text);
    c.ok();
    assert_eq!(fake.requests()[0].http_status, 502);
}

#[tokio::test]
async fn a_fault_for_one_havip_hits_only_requests_naming_it() {
    let fake = fake().await;
    fake.add_havip(
        HavipSpec::new("havip-00000002", Ipv4Addr::new(198, 18, 0, 101)).check_associate(true),
    );
    fake.inject(Fault::always(FaultKind::Throttle).for_havip("havip-00000002"));

    let other = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"]}),
    )
    .await;
    let named = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000002"]}),
    )
    .await;
    let in_set = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000002", "ins-cccccccc", "CVM")]}),
    )
    .await;

    other.ok();
    assert_eq!(named.code(), Some("RequestLimitExceeded"));
    assert_eq!(in_set.code(), Some("RequestLimitExceeded"));
    assert!(
        !fake
            .havip("havip-00000002")
            .unwrap()
            .in_range("ins-cccccccc")
    );
}

#[tokio::test]
async fn delay_fault_holds_the_answer_back_but_applies_the_write() {
    let fake = fake().await;
    fake.inject(
        Fault::on(
            "AssociateHaVipInstance",
            FaultKind::Delay(Duration::from_secs(30)),
        )
        .times(1),
    );
    let set = json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]});
    let short = Call {
        timeout: Duration::from_millis(300),
        ..Call::default()
    };

    let err = try_call(&fake, "AssociateHaVipInstance", &set, &short)
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    assert!(
        fake.havip("havip-00000001")
            .unwrap()
            .in_range("ins-cccccccc"),
        "the write happened even though the client gave up"
    );
    let retry = call(&fake, "AssociateHaVipInstance", set).await;
    assert_eq!(
        retry.code(),
        Some("InvalidParameterValue.DuplicatedHaVipAssociations")
    );
}

#[tokio::test]
async fn hang_fault_never_answers_and_has_no_effect() {
    let fake = fake().await;
    fake.inject(Fault::on("AssociateHaVipInstance", FaultKind::Hang).times(1));
    let set = json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]});
    let short = Call {
        timeout: Duration::from_millis(300),
        ..Call::default()
    };

    let err = try_call(&fake, "AssociateHaVipInstance", &set, &short)
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    assert!(
        !fake
            .havip("havip-00000001")
            .unwrap()
            .in_range("ins-cccccccc"),
        "a hung request must not take effect"
    );
    assert_eq!(fake.requests()[0].fault, Some(FaultKind::Hang));
    // The next request is served normally.
    call(&fake, "AssociateHaVipInstance", set).await.ok();
}

#[tokio::test]
async fn drop_connection_fault_is_a_transport_error_not_a_timeout() {
    let fake = fake().await;
    fake.inject(Fault::on("DescribeHaVips", FaultKind::DropConnection).times(1));

    let err = try_call(&fake, "DescribeHaVips", &json!({}), &Call::default())
        .await
        .unwrap_err();
    let next = call(&fake, "DescribeHaVips", json!({})).await;

    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    next.ok();
    let log = fake.requests();
    assert_eq!(log[0].fault, Some(FaultKind::DropConnection));
    assert_eq!(log[0].http_status, 0);
    assert!(log[0].signature_valid);
}

#[tokio::test]
async fn a_fault_on_one_action_leaves_the_others_alone() {
    let fake = fake().await;
    fake.inject(Fault::on("AssociateHaVipInstance", FaultKind::Http(503)));

    call(&fake, "DescribeHaVips", json!({})).await.ok();
    let w = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]}),
    )
    .await;

    assert_eq!(w.status, 503);
}

#[tokio::test]
async fn requests_are_recorded_with_signature_validity() {
    let fake = fake().await;
    let wrong_key = Call {
        key: "not-the-key".into(),
        ..Call::default()
    };

    call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"]}),
    )
    .await
    .ok();
    let bad = call_with(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]}),
        &wrong_key,
    )
    .await;

    assert_eq!(bad.code(), Some("AuthFailure.SignatureFailure"));
    assert!(
        !fake
            .havip("havip-00000001")
            .unwrap()
            .in_range("ins-cccccccc")
    );
    let log = fake.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "DescribeHaVips");
    assert_eq!(log[0].body, json!({"HaVipIds": ["havip-00000001"]}));
    assert!(log[0].signature_valid);
    assert_eq!(log[0].error_code, None);
    assert_eq!(log[0].secret_id.as_deref(), Some(ID));
    assert!(
        log[0]
            .header("authorization")
            .unwrap()
            .starts_with("TC3-HMAC-SHA256 ")
    );
    assert!(!log[1].signature_valid);
    assert_eq!(
        log[1].error_code.as_deref(),
        Some("AuthFailure.SignatureFailure")
    );
    assert!(log[1].at >= log[0].at);
    let writes = fake.write_requests();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].action, "AssociateHaVipInstance");
}

#[tokio::test]
async fn auth_failures_use_the_real_codes() {
    let fake = fake().await;
    fake.add_temporary_key("AKIDtemporary", "temporary-key", "the-token");
    let temp = Call {
        id: "AKIDtemporary".into(),
        key: "temporary-key".into(),
        ..Call::default()
    };

    let unknown = call_with(
        &fake,
        "DescribeHaVips",
        json!({}),
        &Call {
            id: "AKIDnobody".into(),
            ..Call::default()
        },
    )
    .await;
    let no_token = call_with(&fake, "DescribeHaVips", json!({}), &temp).await;
    let wrong_token = call_with(
        &fake,
        "DescribeHaVips",
        json!({}),
        &Call {
            token: Some("other".into()),
            ..temp.clone()
        },
    )
    .await;
    let right_token = call_with(
        &fake,
        "DescribeHaVips",
        json!({}),
        &Call {
            token: Some("the-token".into()),
            ..temp.clone()
        },
    )
    .await;
    let other_content_type = call_with(
        &fake,
        "DescribeHaVips",
        json!({}),
        &Call {
            sent_content_type: "application/json; charset=utf-8".into(),
            ..Call::default()
        },
    )
    .await;

    assert_eq!(unknown.code(), Some("AuthFailure.SecretIdNotFound"));
    assert_eq!(no_token.code(), Some("AuthFailure.TokenFailure"));
    assert_eq!(wrong_token.code(), Some("AuthFailure.TokenFailure"));
    right_token.ok();
    assert_eq!(
        other_content_type.code(),
        Some("AuthFailure.SignatureFailure")
    );
    let printed = format!("{:?}", fake.requests());
    assert!(
        !printed.contains("the-token"),
        "Debug of the log must mask X-TC-Token"
    );
}

#[tokio::test]
async fn signature_expire_comes_with_a_date_header_to_correct_the_clock() {
    let fake = fake().await;
    fake.set_server_time(ServerTime::OffsetSeconds(3600));

    let stale = call(&fake, "DescribeHaVips", json!({})).await;

    assert_eq!(stale.code(), Some("AuthFailure.SignatureExpire"));
    let date = stale.date.clone().unwrap();
    let server = chrono::NaiveDateTime::parse_from_str(&date, havip_agent::cloud::HTTP_DATE)
        .unwrap_or_else(|e| panic!("Date {date:?} is not an HTTP date: {e}"))
        .and_utc()
        .timestamp();
    assert!(
        (server - now() - 3600).abs() < 60,
        "Date {date} shows the fake's clock"
    );
    let corrected = Call {
        timestamp: Some(server),
        ..Call::default()
    };
    call_with(&fake, "DescribeHaVips", json!({}), &corrected)
        .await
        .ok();
}

#[tokio::test]
async fn vector_d_bytes_are_accepted_at_the_vector_time() {
    // The reference's worked example D, sent byte for byte with the fake's clock at its timestamp.
    let fake = FakeCloud::start().await;
    fake.add_key("AKIDEXAMPLE", "secretkeyEXAMPLE");
    fake.add_havip(HavipSpec::new("havip-crb65sya", VIP).check_associate(true));
    fake.set_server_time(ServerTime::Fixed(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let body = r#"{"HaVipAssociationSet": [{"InstanceId": "ins-nkgrfbic", "HaVipId": "havip-crb65sya", "InstanceType": "CVM"}]}"#;

    let resp = client()
        .post(fake.endpoint())
        .header("Host", "vpc.tencentcloudapi.com")
        .header("Content-Type", "application/json")
        .header("X-TC-Action", "AssociateHaVipInstance")
        .header("X-TC-Timestamp", "1700000000")
        .header("X-TC-Version", "2017-03-12")
        .header("X-TC-Region", "ap-guangzhou")
        .header(
            "Authorization",
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/vpc/tc3_request, SignedHeaders=content-type;host, \
             Signature=5da45239937771ef28f91199496474089be1da5c1a1b3391e84bc33c6ba6f687",
        )
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.headers()["date"], "Tue, 14 Nov 2023 22:13:20 GMT");
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(v["Response"]["Error"].is_null(), "{v}");
    assert!(fake.requests()[0].signature_valid);
    assert!(
        fake.havip("havip-crb65sya")
            .unwrap()
            .in_range("ins-nkgrfbic")
    );
}

#[tokio::test]
async fn vector_c_bytes_with_their_token_are_accepted_at_the_vector_time() {
    // The reference's worked example C: temporary credentials, X-TC-Token sent but not signed.
    let fake = FakeCloud::start().await;
    fake.add_temporary_key("AKIDEXAMPLE", "secretkeyEXAMPLE", "tokenEXAMPLE");
    fake.add_havip(HavipSpec::new("havip-9o233uri", VIP).check_associate(true));
    fake.set_server_time(ServerTime::Fixed(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_551_113_065),
    ));
    let send = |token: &'static str| {
        client()
            .post(fake.endpoint())
            .header("Host", "vpc.tencentcloudapi.com")
            .header("Content-Type", "application/json")
            .header("X-TC-Action", "DescribeHaVips")
            .header("X-TC-Timestamp", "1551113065")
            .header("X-TC-Version", "2017-03-12")
            .header("X-TC-Region", "ap-guangzhou")
            .header("X-TC-Token", token)
            .header(
                "Authorization",
                "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/vpc/tc3_request, SignedHeaders=content-type;host, \
                 Signature=42361b7fd71cbf19569c8e3b9850b044b5b9a4dab3895125d03528eba9cd301e",
            )
            .body(r#"{"HaVipIds": ["havip-9o233uri"]}"#)
            .send()
    };

    let good: Value =
        serde_json::from_str(&send("tokenEXAMPLE").await.unwrap().text().await.unwrap()).unwrap();
    let bad: Value =
        serde_json::from_str(&send("tokenOTHER").await.unwrap().text().await.unwrap()).unwrap();

    assert_eq!(
        good["Response"]["HaVipSet"][0]["HaVipId"], "havip-9o233uri",
        "{good}"
    );
    assert_eq!(
        bad["Response"]["Error"]["Code"], "AuthFailure.TokenFailure",
        "{bad}"
    );
    let log = fake.requests();
    assert!(log[0].signature_valid);
    assert!(
        !log[1].signature_valid,
        "a wrong token makes the request invalid"
    );
}

/// A secondary ENI of ins-aaaaaaaa, with its own MAC.
const ENI_A2: &str = "eni-a2a2a2a2";
const MAC_A2: [u8; 6] = [2, 0, 0, 0, 0, 0xa2];

#[tokio::test]
async fn a_havip_created_without_asking_has_check_associate_off_so_any_garp_takes_it() {
    // Regression: the fake used to create HAVIPs with CheckAssociate on, unlike CreateHaVip ("默认不开启").
    let fake = FakeCloud::start().await;
    fake.add_key(ID, KEY);
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_instance("ins-cccccccc", MAC_C);
    fake.add_havip(
        HavipSpec::new("havip-00000002", VIP)
            .associate("ins-aaaaaaaa")
            .holder("ins-aaaaaaaa"),
    );

    let h = call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000002"]}),
    )
    .await;
    let moved = fake.garp(MAC_C, VIP);

    assert_eq!(h.ok()["HaVipSet"][0]["CheckAssociate"], false);
    assert!(
        moved.moved(),
        "an instance outside the range takes the VIP: {moved:?}"
    );
    assert_eq!(
        fake.havip("havip-00000002").unwrap().instance_id.as_deref(),
        Some("ins-cccccccc")
    );
}

#[tokio::test]
async fn a_garp_from_a_secondary_eni_reports_the_cvm_as_instance_and_that_eni_as_interface() {
    let fake = fake().await;
    assert!(fake.add_eni("ins-bbbbbbbb", "eni-b2b2b2b2", [2, 0, 0, 0, 0, 0xb2]));
    assert!(
        !fake.add_eni("ins-nobody00", "eni-00000000", [2, 0, 0, 0, 0, 0xf0]),
        "an ENI must be attached to a known instance"
    );

    let moved = fake.garp([2, 0, 0, 0, 0, 0xb2], VIP);

    assert!(moved.moved(), "{moved:?}");
    let h = &call(
        &fake,
        "DescribeHaVips",
        json!({"HaVipIds": ["havip-00000001"]}),
    )
    .await
    .ok()["HaVipSet"][0]
        .clone();
    assert_eq!(h["InstanceId"], "ins-bbbbbbbb", "the CVM, never the ENI");
    assert_eq!(
        h["NetworkInterfaceId"], "eni-b2b2b2b2",
        "the ENI that announced"
    );
    // The agent's holder rule on the fake's view: the ENI in ENI mode, the CVM in CVM mode.
    let snap = fake.havip("havip-00000001").unwrap();
    assert!(snap.held_by(NodeType::Eni, "eni-b2b2b2b2"));
    assert!(!snap.held_by(NodeType::Eni, &eni_id_for("ins-bbbbbbbb")));
    assert!(snap.held_by(NodeType::Cvm, "ins-bbbbbbbb"));
    // The primary ENI of the same instance announcing moves it back to (instance, primary ENI).
    assert!(fake.garp(MAC_B, VIP).moved());
    assert_eq!(
        fake.havip("havip-00000001").unwrap().network_interface_id,
        Some(eni_id_for("ins-bbbbbbbb"))
    );
}

#[tokio::test]
async fn eni_entries_are_checked_against_the_eni_that_announced() {
    let fake = FakeCloud::start().await;
    fake.add_key(ID, KEY);
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_instance("ins-bbbbbbbb", MAC_B);
    assert!(fake.add_eni("ins-aaaaaaaa", ENI_A2, MAC_A2));
    fake.add_havip(
        HavipSpec::new("havip-00000003", VIP)
            .check_associate(true)
            .holder("ins-bbbbbbbb"),
    );

    let assoc_ok = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000003", ENI_A2, "ENI")]}),
    )
    .await;
    let from_primary = fake.garp(MAC_A, VIP);
    let from_secondary = fake.garp(MAC_A2, VIP);

    assoc_ok.ok();
    assert_eq!(
        from_primary,
        GarpOutcome::NotInRange {
            havip_id: "havip-00000003".into(),
            instance_id: "ins-aaaaaaaa".into()
        },
        "the ENI entry covers only that ENI, not its instance's primary ENI"
    );
    assert!(from_secondary.moved(), "{from_secondary:?}");
    let snap = fake.havip("havip-00000003").unwrap();
    assert_eq!(snap.instance_id.as_deref(), Some("ins-aaaaaaaa"));
    assert_eq!(snap.network_interface_id.as_deref(), Some(ENI_A2));
}

#[tokio::test]
async fn associating_a_primary_or_unattached_eni_is_refused_and_changes_nothing() {
    let fake = FakeCloud::start().await;
    fake.add_key(ID, KEY);
    fake.add_instance("ins-aaaaaaaa", MAC_A);
    fake.add_havip(HavipSpec::new("havip-00000004", VIP).check_associate(true));

    let primary = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000004", &eni_id_for("ins-aaaaaaaa"), "ENI")]}),
    )
    .await;
    let unknown = call(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000004", "eni-99999999", "ENI")]}),
    )
    .await;

    assert_eq!(primary.code(), Some(PRIMARY_ENI_CODE), "{primary:?}");
    assert!(primary.text.contains("primary ENI"), "{}", primary.text);
    assert_eq!(unknown.code(), Some("ResourceNotFound"), "{unknown:?}");
    assert!(unknown.text.contains("eni-99999999"), "{}", unknown.text);
    assert!(
        fake.havip("havip-00000004")
            .unwrap()
            .associations
            .is_empty()
    );
}

#[tokio::test]
async fn the_region_header_is_checked_and_havips_live_in_one_region() {
    let fake = fake().await;
    let other = Call {
        region: "ap-shanghai".into(),
        ..Call::default()
    };
    let bogus = Call {
        region: "ap-atlantis".into(),
        ..Call::default()
    };

    let here = call(&fake, "DescribeHaVips", json!({})).await;
    let elsewhere = call_with(&fake, "DescribeHaVips", json!({}), &other).await;
    let associate_elsewhere = call_with(
        &fake,
        "AssociateHaVipInstance",
        json!({"HaVipAssociationSet": [assoc("havip-00000001", "ins-cccccccc", "CVM")]}),
        &other,
    )
    .await;
    let invalid = call_with(&fake, "DescribeHaVips", json!({}), &bogus).await;

    assert_eq!(here.ok()["TotalCount"], 1);
    assert_eq!(
        elsewhere.ok()["TotalCount"],
        0,
        "another region has none of these HAVIPs"
    );
    assert_eq!(elsewhere.ok()["HaVipSet"], json!([]));
    assert_eq!(associate_elsewhere.code(), Some("ResourceNotFound"));
    assert_eq!(invalid.code(), Some(INVALID_REGION_CODE), "{invalid:?}");
    assert!(invalid.text.contains("ap-atlantis"), "{}", invalid.text);
    assert_eq!(fake.havip("havip-00000001").unwrap().associations.len(), 2);

    fake.set_region("ap-shanghai");
    let moved = call_with(&fake, "DescribeHaVips", json!({}), &other).await;
    assert_eq!(
        moved.ok()["TotalCount"],
        1,
        "set_region moves the HAVIPs' home"
    );
}
