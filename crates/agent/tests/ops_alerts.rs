//! `[[alert]]` webhooks against wiremock: body formats, retries, WeCom's errcode, and a caller that never
//! waits for a webhook.

use std::time::{Duration, SystemTime};

use havip_agent::alerts::{Alert, AlertKind, Alerter, AlerterOptions};
use havip_agent::config::{AlertConfig, AlertFormat, Dur, WecomMsgType};
use havip_agent::metrics::Metrics;
use havip_agent::secret::Secret;
use havip_testkit::testbed::logs::LogCapture;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DEADLINE: Duration = Duration::from_secs(20);

fn sink(url: String, format: AlertFormat, msgtype: WecomMsgType, attempts: u32) -> AlertConfig {
    AlertConfig {
        url: Secret::new(url),
        format,
        msgtype,
        timeout: Dur::from_secs(10),
        attempts,
    }
}

/// Fast retries, so tests do not wait for production backoff.
fn fast() -> AlerterOptions {
    AlerterOptions {
        queue: 16,
        backoff: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
    }
}

fn alert(kind: AlertKind) -> Alert {
    Alert {
        event: kind,
        havip_id: "havip-11111111".into(),
        vip: "198.18.0.250/24".into(),
        master: "mymaster".into(),
        node: "redis-b".into(),
        failover_id: Some("f-0007".into()),
        message: "sentinel names 198.18.0.2:6379 at epoch 9".into(),
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

async fn bodies(server: &MockServer, at: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == at)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn failures(m: &Metrics, sink: &str) -> Option<f64> {
    m.value(
        "havip_agent_alert_delivery_failures_total",
        &[("sink", sink)],
    )
}

#[tokio::test]
async fn json_sink_posts_every_field() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("{}/hook", server.uri()),
            AlertFormat::Json,
            WecomMsgType::Text,
            1,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Acquired));
    assert!(alerter.flush(DEADLINE).await);

    let got = bodies(&server, "/hook").await;
    assert_eq!(got.len(), 1);
    let b = &got[0];
    assert_eq!(b["source"], "havip-agent");
    assert_eq!(b["event"], "acquired");
    assert_eq!(b["severity"], "info");
    assert_eq!(b["havip_id"], "havip-11111111");
    assert_eq!(b["vip"], "198.18.0.250/24");
    assert_eq!(b["master"], "mymaster");
    assert_eq!(b["node"], "redis-b");
    assert_eq!(b["failover_id"], "f-0007");
    assert_eq!(b["message"], "sentinel names 198.18.0.2:6379 at epoch 9");
    assert_eq!(b["at"], "2023-11-14T22:13:20Z");
    let req = &server.received_requests().await.unwrap()[0];
    assert_eq!(req.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(failures(&metrics, "alert[0]"), None);
}

#[tokio::test]
async fn wecom_text_and_markdown_have_the_robot_shapes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"errcode":0,"errmsg":"ok"}"#))
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[
            sink(
                format!("{}/text?key=k1", server.uri()),
                AlertFormat::Wecom,
                WecomMsgType::Text,
                1,
            ),
            sink(
                format!("{}/md?key=k2", server.uri()),
                AlertFormat::Wecom,
                WecomMsgType::Markdown,
                1,
            ),
        ],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Fenced));
    assert!(alerter.flush(DEADLINE).await);

    let text = bodies(&server, "/text").await;
    assert_eq!(text.len(), 1);
    let t = text[0].as_object().unwrap();
    assert_eq!(t.len(), 2, "only msgtype and text: {t:?}");
    assert_eq!(t["msgtype"], "text");
    let content = t["text"]["content"].as_str().unwrap();
    for want in [
        "fenced",
        "havip-11111111",
        "198.18.0.250/24",
        "mymaster",
        "redis-b",
        "f-0007",
        "epoch 9",
    ] {
        assert!(
            content.contains(want),
            "text content lacks {want:?}: {content}"
        );
    }

    let md = bodies(&server, "/md").await;
    assert_eq!(md.len(), 1);
    let m = md[0].as_object().unwrap();
    assert_eq!(m.len(), 2, "only msgtype and markdown: {m:?}");
    assert_eq!(m["msgtype"], "markdown");
    let content = m["markdown"]["content"].as_str().unwrap();
    assert!(
        content.contains("<font color=\"warning\">fenced</font>"),
        "{content}"
    );
    assert!(content.contains("> VIP: 198.18.0.250/24"), "{content}");
    assert_eq!(failures(&metrics, "alert[0]"), None);
    assert_eq!(failures(&metrics, "alert[1]"), None);
}

#[tokio::test]
async fn retries_after_a_500_and_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("{}/hook", server.uri()),
            AlertFormat::Json,
            WecomMsgType::Text,
            3,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Acquired));
    assert!(alerter.flush(DEADLINE).await);

    let got = bodies(&server, "/hook").await;
    assert_eq!(got.len(), 2, "one failed attempt, one successful retry");
    assert_eq!(got[0], got[1], "the retry sends the same body");
    assert_eq!(failures(&metrics, "alert[0]"), None);
}

#[tokio::test]
async fn wecom_errcode_is_a_failure_and_a_bad_key_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#),
        )
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("{}/send?key=bad", server.uri()),
            AlertFormat::Wecom,
            WecomMsgType::Text,
            3,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::ClaimFailed));
    alerter.notify(alert(AlertKind::ClaimFailed));
    assert!(alerter.flush(DEADLINE).await);

    assert_eq!(failures(&metrics, "alert[0]"), Some(2.0));
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "errcode 93000 cannot heal: one attempt per alert"
    );
}

#[tokio::test]
async fn wecom_rate_limit_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        )
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("{}/send", server.uri()),
            AlertFormat::Wecom,
            WecomMsgType::Markdown,
            3,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Released));
    assert!(alerter.flush(DEADLINE).await);

    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    assert_eq!(failures(&metrics, "alert[0]"), Some(1.0));
}

#[tokio::test]
async fn hanging_webhook_never_delays_notify_and_a_full_queue_drops_with_a_count() {
    let server = MockServer::start().await;
    // Answers long after this test is over.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3600)))
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let mut cfg = sink(
        format!("{}/hook", server.uri()),
        AlertFormat::Json,
        WecomMsgType::Text,
        3,
    );
    cfg.timeout = Dur::from_secs(3600);
    let alerter = Alerter::with_options(
        &[cfg],
        metrics.clone(),
        AlerterOptions { queue: 2, ..fast() },
    );

    alerter.notify(alert(AlertKind::Acquired));
    // Wait until the worker is stuck inside the first delivery.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.received_requests().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first alert never sent"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Two fill the queue, three more find it full: every call returns although nothing can be delivered.
    for _ in 0..5 {
        alerter.notify(alert(AlertKind::Fenced));
    }

    assert_eq!(
        metrics.value("havip_agent_alert_dropped_total", &[("sink", "alert[0]")]),
        Some(3.0)
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        failures(&metrics, "alert[0]"),
        None,
        "nothing has failed yet"
    );
    assert!(
        !alerter.flush(Duration::from_millis(50)).await,
        "flush reports that the hanging delivery is not done"
    );
}

// Regression guard: reqwest's errors print the request URL, which holds WeCom's key.
#[tokio::test]
async fn delivery_failures_are_logged_without_the_url() {
    // #[tokio::test] runs every task on this thread, so the worker logs into this subscriber.
    let (logs, _guard) = LogCapture::thread_debug();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key=SUPERSECRETKEY"),
            AlertFormat::Wecom,
            WecomMsgType::Text,
            2,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Acquired));
    assert!(alerter.flush(DEADLINE).await);

    let text = logs.text();
    assert!(text.contains("alert delivery failed; giving up"), "{text}");
    assert!(text.contains("alert[0]"), "{text}");
    assert!(
        !text.contains("SUPERSECRETKEY"),
        "the URL leaked into the logs: {text}"
    );
    assert!(
        !text.contains("/cgi-bin/webhook"),
        "the URL leaked into the logs: {text}"
    );
    assert_eq!(failures(&metrics, "alert[0]"), Some(1.0));
    assert!(!format!("{alerter:?}").contains("SUPERSECRETKEY"));
}

/// A webhook that echoes the request's `key` back, the way WeCom's errors quote a bad key
/// ("invalid webhook url, hint: [...]"), in a reply shaped by `reply`.
struct EchoKey {
    reply: fn(key: &str, url: &str) -> String,
}

impl wiremock::Respond for EchoKey {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let key = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        ResponseTemplate::new(200).set_body_string((self.reply)(&key, request.url.as_str()))
    }
}

/// Runs one WeCom alert against a webhook answering with `reply`, and returns the captured logs.
async fn logs_of_a_failed_wecom_delivery(key: &str, reply: fn(&str, &str) -> String) -> String {
    // #[tokio::test] runs every task on this thread, so the worker logs into this subscriber.
    let (logs, _guard) = LogCapture::thread_debug();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(EchoKey { reply })
        .mount(&server)
        .await;
    let metrics = Metrics::new();
    let alerter = Alerter::with_options(
        &[sink(
            format!("{}/cgi-bin/webhook/send?key={key}", server.uri()),
            AlertFormat::Wecom,
            WecomMsgType::Text,
            2,
        )],
        metrics.clone(),
        fast(),
    );

    alerter.notify(alert(AlertKind::Fenced));
    assert!(alerter.flush(DEADLINE).await);

    assert_eq!(failures(&metrics, "alert[0]"), Some(1.0));
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "the webhook was reached on every attempt"
    );
    logs.text()
}

// Regression: WeCom's errmsg can echo the bare key, which went into the journal.
#[tokio::test]
async fn a_wecom_error_that_echoes_the_key_is_logged_without_it() {
    let key = "693a91f6-7xxx-4bc4-97a0-0ec2sf4e0b11";
    let text = logs_of_a_failed_wecom_delivery(key, |key, url| {
        // errcode -1 (busy) is retried, so both attempts log the error.
        serde_json::json!({
            "errcode": -1,
            "errmsg": format!("invalid webhook url, hint: [{key}] from {url}"),
        })
        .to_string()
    })
    .await;

    assert!(text.contains("alert delivery failed; giving up"), "{text}");
    assert!(text.contains("invalid webhook url, hint: [***]"), "{text}");
    assert!(!text.contains(key), "the key leaked into the logs: {text}");
}

#[tokio::test]
async fn a_wecom_reply_without_errcode_that_echoes_the_key_is_logged_without_it() {
    let key = "K3yEchoedInAnOddReply0042";
    let text = logs_of_a_failed_wecom_delivery(key, |key, _| {
        serde_json::json!({ "error": format!("no such robot {key}") }).to_string()
    })
    .await;

    assert!(text.contains("no such robot ***"), "{text}");
    assert!(!text.contains(key), "the key leaked into the logs: {text}");
}
