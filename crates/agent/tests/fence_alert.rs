//! A write pause that fails raises one `pause_failed` alert and counts every failure, on the real
//! Sentinel lab: the holder is cut off from the majority and its `[redis]` refuses the fence.

use std::time::Duration;

use havip_testkit::testbed::agents::{Fleet, FleetSpec, HAVIP_ID};
use serde_json::Value;
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn alert_bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/alert")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_client_pause_raises_one_pause_failed_alert_and_counts_each_failure() {
    // Arrange: every agent fences against a Redis address where nothing listens, so CLIENT PAUSE fails.
    let sink = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/alert"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&sink)
        .await;
    let spec = FleetSpec {
        sentinel_toml: "fence_after = \"300ms\"".into(),
        redis_fence: false,
        extra_toml: format!(
            "[redis]\naddress = \"127.0.0.1:1\"\npause = \"400ms\"\n\n[[alert]]\nurl = \"{}/alert\"\nattempts = 1\n",
            sink.uri()
        ),
        ..FleetSpec::default()
    };
    let fleet = Fleet::start(spec).await.expect("fleet starts");
    let m = fleet.master_index().await;
    fleet
        .wait_until(
            Duration::from_secs(20),
            "the initial master to hold the vip",
            |f| f.settled_on(m),
        )
        .await;

    // Act: the two other Sentinels stall (SIGSTOP), so the holder loses the majority and fences.
    let others: Vec<usize> = (0..3).filter(|i| *i != m).collect();
    for i in &others {
        fleet.lab.stop_sentinel(*i).unwrap();
    }

    // Assert: renewals keep failing and are counted; one alert names the failure and the Redis.
    let failures = || {
        fleet.nodes[m]
            .metrics
            .value("havip_agent_pause_failures_total", &[("havip", HAVIP_ID)])
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while failures() < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the failed pause was not counted three times (renewals): {}",
            failures()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let pause_alerts = loop {
        let alerts: Vec<Value> = alert_bodies(&sink)
            .await
            .into_iter()
            .filter(|b| b["event"] == "pause_failed")
            .collect();
        if !alerts.is_empty() || Instant::now() >= deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for i in &others {
        fleet.lab.cont_sentinel(*i).unwrap();
    }
    assert_eq!(
        pause_alerts.len(),
        1,
        "one alert per run of failures, not one per renewal: {pause_alerts:#?}"
    );
    let a = &pause_alerts[0];
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["havip_id"], HAVIP_ID);
    let message = a["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1:1") && message.contains("pause writes"),
        "{message}"
    );
    fleet.shutdown().await;
}
