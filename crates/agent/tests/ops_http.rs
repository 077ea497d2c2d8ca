//! The HTTP endpoint on a real socket: `/metrics`, `/healthz`, `/status`, and the CLI's client.

use std::time::{Duration, SystemTime};

use havip_agent::http::{self, HttpError};
use havip_agent::metrics::{Metrics, sample_value};
use havip_agent::status::{
    HavipStatus, Health, StatusError, StatusHandle, StatusReport, fetch_status, status_url,
};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

struct Running {
    base: String,
    server: http::HttpServer,
    stop: oneshot::Sender<()>,
}

async fn start(metrics: Metrics, status: StatusHandle, health: Health) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        metrics,
        status,
        health,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    Running {
        base: format!("http://{}", server.local_addr),
        server,
        stop,
    }
}

/// One client per test binary: building one loads TLS roots, which is slow enough to age a beat.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    })
}

async fn get(url: &str) -> (u16, String, String) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

fn report() -> StatusReport {
    StatusReport {
        node: "redis-a".into(),
        instance_id: "ins-aaaaaaaa".into(),
        address: "198.18.0.1".into(),
        sentinels_reachable: 3,
        sentinels_total: 3,
        havips: vec![HavipStatus {
            havip_id: "havip-11111111".into(),
            master: "mymaster".into(),
            vip: "198.18.0.250/24".into(),
            majority_master: Some("198.18.0.1:6379".into()),
            epoch: Some(3),
            desired_holder: true,
            local_bound: true,
            cloud_holder: Some("ins-aaaaaaaa".into()),
            cloud_matches: Some(true),
            last_switch: Some("2025-01-02T03:04:05Z".into()),
            fenced: false,
            failover_id: Some("f-1".into()),
            pending_master: None,
            eip: Some("203.0.113.10".into()),
            cloud_eip: Some("203.0.113.10".into()),
            eip_bound: Some(true),
        }],
        sentinels_uncorroborated: vec![],
        unhealthy: vec![],
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_every_family_with_labels_and_values() {
    let m = Metrics::new();
    let h = "havip-11111111";
    m.set_desired(h, true);
    m.set_local_holder(h, true);
    m.set_cloud_match(h, Some(true));
    m.set_sentinels_reachable(2, 3);
    m.set_last_switch(h, SystemTime::now() - Duration::from_secs(30));
    m.observe_claim(h, Duration::from_millis(3), true);
    m.observe_api("DescribeHaVips", Duration::from_millis(40), None);
    m.observe_api(
        "HaVipAssociateAddressIp",
        Duration::from_millis(90),
        Some("InternalError"),
    );
    m.add_garp_frames(h, 8);
    m.inc_fence_release(h);
    m.inc_alert_failure("alert[0]");
    m.inc_hook_failure("acquired");
    let srv = start(m, StatusHandle::default(), Health::new(DEADLINE)).await;

    let (code, ctype, text) = get(&format!("{}/metrics", srv.base)).await;

    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let l = [("havip", h)];
    let expect = [
        ("havip_agent_desired_holder", &l[..], 1.0),
        ("havip_agent_local_holder", &l[..], 1.0),
        ("havip_agent_cloud_holder_matches", &l[..], 1.0),
        ("havip_agent_sentinels_reachable", &[][..], 2.0),
        ("havip_agent_sentinels_configured", &[][..], 3.0),
        ("havip_agent_garp_frames_total", &l[..], 8.0),
        ("havip_agent_fence_releases_total", &l[..], 1.0),
        (
            "havip_agent_claim_duration_seconds_count",
            &[("havip", h), ("result", "ok")][..],
            1.0,
        ),
        (
            "havip_agent_cloud_api_request_duration_seconds_count",
            &[("action", "DescribeHaVips")][..],
            1.0,
        ),
        (
            "havip_agent_cloud_api_errors_total",
            &[
                ("action", "HaVipAssociateAddressIp"),
                ("code", "InternalError"),
            ][..],
            1.0,
        ),
        (
            "havip_agent_alert_delivery_failures_total",
            &[("sink", "alert[0]")][..],
            1.0,
        ),
        (
            "havip_agent_hook_failures_total",
            &[("event", "acquired")][..],
            1.0,
        ),
        (
            "havip_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))][..],
            1.0,
        ),
    ];
    for (name, labels, want) in expect {
        assert_eq!(
            sample_value(&text, name, labels),
            Some(want),
            "{name}{labels:?} in\n{text}"
        );
    }
    let since = sample_value(&text, "havip_agent_seconds_since_last_switch", &l).unwrap();
    assert!((30.0..3600.0).contains(&since), "{since}");
    assert!(text.contains("# TYPE havip_agent_claim_duration_seconds histogram"));
}

#[tokio::test]
async fn healthz_is_200_while_every_task_beats_then_503_naming_the_stuck_one() {
    let health = Health::new(Duration::from_millis(1000));
    let srv = start(Metrics::new(), StatusHandle::default(), health.clone()).await;
    let url = format!("{}/healthz", srv.base);
    let havip = health.register("havip havip-1");
    let watch = health.register("sentinel watch 198.18.0.1:26379");

    let (code, _, body) = get(&url).await;
    assert_eq!(code, 503, "no beat yet: {body}");
    assert!(body.contains("no beat yet"), "{body}");

    havip.beat();
    watch.beat();
    let (code, _, body) = get(&url).await;
    assert_eq!(code, 200, "{body}");

    // The HAVIP task keeps beating, the Sentinel watcher stops: healthz must turn 503 naming it, and
    // /status must name it too.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        havip.beat();
        let (code, _, body) = get(&url).await;
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never went stale"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        body.contains("sentinel watch 198.18.0.1:26379: last beat"),
        "{body}"
    );
    assert!(!body.contains("havip-1"), "{body}");
    let (_, _, status) = get(&format!("{}/status", srv.base)).await;
    let report: StatusReport = serde_json::from_str(&status).unwrap();
    assert_eq!(report.unhealthy.len(), 1, "{status}");
    assert!(report.unhealthy[0].starts_with("sentinel watch 198.18.0.1:26379"));

    watch.beat();
    assert_eq!(get(&url).await.0, 200);
}

#[tokio::test]
async fn status_json_round_trips_through_the_cli_client() {
    let status = StatusHandle::new(report());
    let srv = start(Metrics::new(), status.clone(), Health::new(DEADLINE)).await;

    let got = fetch_status(&status_url(srv.server.local_addr))
        .await
        .unwrap();
    assert_eq!(got, report());

    status.update_havip("havip-11111111", |h| h.fenced = true);
    let (code, ctype, body) = get(&format!("{}/status", srv.base)).await;
    assert_eq!(code, 200);
    assert_eq!(ctype, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["havips"][0]["fenced"], true);
    assert_eq!(v["havips"][0]["majority_master"], "198.18.0.1:6379");
    assert_eq!(v["sentinels_total"], 3);
}

#[tokio::test]
async fn server_stops_when_told_and_the_client_then_names_the_url() {
    let srv = start(
        Metrics::new(),
        StatusHandle::default(),
        Health::new(DEADLINE),
    )
    .await;
    let url = status_url(srv.server.local_addr);
    assert!(fetch_status(&url).await.is_ok());

    srv.stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, srv.server.task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();

    let e = fetch_status(&url).await.unwrap_err();
    assert!(matches!(e, StatusError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&url), "{e}");
}

#[tokio::test]
async fn unknown_paths_are_404_and_a_busy_address_is_a_named_error() {
    let srv = start(
        Metrics::new(),
        StatusHandle::default(),
        Health::new(DEADLINE),
    )
    .await;
    assert_eq!(get(&format!("{}/nope", srv.base)).await.0, 404);
    let e = fetch_status(&format!("{}/nope", srv.base))
        .await
        .unwrap_err();
    assert!(matches!(e, StatusError::Http { status: 404, .. }), "{e:?}");

    let busy = srv.server.local_addr;
    let e = http::serve(
        busy,
        Metrics::new(),
        StatusHandle::default(),
        Health::new(DEADLINE),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let HttpError::Bind { addr, .. } = &e;
    assert_eq!(*addr, busy);
    assert!(e.to_string().contains("[metrics] listen"), "{e}");
}
