//! The CVM metadata client against a wiremock metadata service: typed reads, 404s, and the errors an
//! operator sees when the service is absent (not a CVM) or slow.

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::metadata::{MetadataClient, MetadataError};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BASE: &str = "/latest/meta-data/";

async fn serve(server: &MockServer, p: &str, status: u16, body: &str) {
    Mock::given(method("GET"))
        .and(path(format!("{BASE}{p}")))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(server)
        .await;
}

fn client(server: &MockServer) -> MetadataClient {
    MetadataClient::new(&format!("{}{BASE}", server.uri()), Duration::from_secs(2)).unwrap()
}

#[tokio::test]
async fn reads_identity_paths_and_normalises_them() {
    let server = MockServer::start().await;
    serve(&server, "instance-id", 200, "ins-nkgrfbic\n").await;
    serve(&server, "local-ipv4", 200, "172.16.2.4").await;
    serve(&server, "mac", 200, "52:54:00:ab:cd:ef").await;
    serve(&server, "placement/region", 200, "ap-guangzhou").await;
    let md = client(&server);

    assert_eq!(md.instance_id().await.unwrap(), "ins-nkgrfbic");
    assert_eq!(md.local_ipv4().await.unwrap(), Ipv4Addr::new(172, 16, 2, 4));
    assert_eq!(
        md.mac().await.unwrap(),
        "52:54:00:AB:CD:EF",
        "uppercase like the service"
    );
    assert_eq!(md.region().await.unwrap(), "ap-guangzhou");
}

#[tokio::test]
async fn unknown_path_is_none_and_a_missing_required_path_names_its_url() {
    let server = MockServer::start().await;
    let md = client(&server);

    assert_eq!(md.get("placement/zone").await.unwrap(), None, "404 is None");
    let err = md.instance_id().await.unwrap_err();
    assert!(matches!(err, MetadataError::Missing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "metadata {}{BASE}instance-id is missing (HTTP 404)",
            server.uri()
        )
    );
}

#[tokio::test]
async fn unreachable_service_asks_whether_this_is_a_cvm() {
    // A port that was free a moment ago: connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}{BASE}");
    let md = MetadataClient::new(&base, Duration::from_secs(2)).unwrap();

    let err = md.instance_id().await.unwrap_err();

    assert!(matches!(err, MetadataError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "metadata service unreachable at {base}instance-id: is this a CVM?"
        )),
        "{text}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn slow_service_times_out_with_the_same_hint() {
    let server = MockServer::start().await;
    Mock::given(path(format!("{BASE}instance-id")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("ins-1")
                .set_delay(Duration::from_secs(10)),
        )
        .mount(&server)
        .await;
    let md = MetadataClient::new(
        &format!("{}{BASE}", server.uri()),
        Duration::from_millis(200),
    )
    .unwrap();

    let err = md.instance_id().await.unwrap_err();

    assert!(matches!(err, MetadataError::Timeout { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("metadata service unreachable at"), "{text}");
    assert!(text.contains("no answer within 200ms"), "{text}");
    assert!(text.ends_with("is this a CVM?"), "{text}");
}

#[tokio::test]
async fn server_errors_and_bad_values_are_named() {
    let server = MockServer::start().await;
    serve(&server, "instance-id", 503, "busy").await;
    serve(&server, "local-ipv4", 200, "not-an-ip").await;
    serve(&server, "mac", 200, "52:54:00").await;
    serve(&server, "placement/region", 200, "  \n").await;
    let md = client(&server);

    let err = md.instance_id().await.unwrap_err();
    assert_eq!(
        err,
        MetadataError::Http {
            url: md.url("instance-id"),
            status: 503
        }
    );
    assert!(err.is_retryable(), "5xx may pass");

    let err = md.local_ipv4().await.unwrap_err().to_string();
    assert!(
        err.contains("local-ipv4")
            && err.contains("\"not-an-ip\"")
            && err.contains("not an IPv4 address"),
        "{err}"
    );
    let err = md.mac().await.unwrap_err().to_string();
    assert!(err.contains("mac returned \"52:54:00\""), "{err}");
    let err = md.region().await.unwrap_err().to_string();
    assert!(
        err.contains("placement/region") && err.contains("empty"),
        "{err}"
    );
}

#[tokio::test]
async fn role_credentials_are_read_and_a_bad_document_is_reported_without_its_text() {
    let server = MockServer::start().await;
    serve(&server, "cam/security-credentials/", 200, "havip-role\n").await;
    serve(
        &server,
        "cam/security-credentials/havip-role",
        200,
        r#"{"TmpSecretId":"AKIDtmp","TmpSecretKey":"tmpkey-s3cr3t","Token":"tok-s3cr3t",
            "ExpiredTime":1700003600,"Expiration":"2023-11-14T23:13:20Z","Code":"Success","New":1}"#,
    )
    .await;
    serve(
        &server,
        "cam/security-credentials/broken",
        200,
        r#"{"TmpSecretId":"AKIDtmp","TmpSecretKey":"tmpkey-s3cr3t","Token":"tok-s3cr3t","ExpiredTime":"soon-s3cr3t"}"#,
    )
    .await;
    let md = client(&server);

    assert_eq!(md.role_name().await.unwrap().as_deref(), Some("havip-role"));
    let creds = md.role_credentials("havip-role").await.unwrap().unwrap();
    assert_eq!(creds.tmp_secret_id.expose(), "AKIDtmp");
    assert_eq!(creds.token.expose(), "tok-s3cr3t");
    assert_eq!(creds.expired_time, 1_700_003_600);
    assert_eq!(creds.code, "Success");
    assert!(
        !format!("{creds:?}").contains("s3cr3t"),
        "Debug masks the credentials"
    );
    assert_eq!(
        md.role_credentials("absent").await.unwrap().map(|c| c.code),
        None,
        "404 is None"
    );

    let err = md.role_credentials("broken").await.unwrap_err();
    assert!(
        matches!(err, MetadataError::BadCredentials { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("s3cr3t"),
        "the document's text is not echoed: {text}"
    );
    assert!(text.contains("cam/security-credentials/broken"), "{text}");
}

#[tokio::test]
async fn no_role_bound_is_none() {
    let server = MockServer::start().await;
    let md = client(&server);
    assert_eq!(md.role_name().await.unwrap(), None);
}
