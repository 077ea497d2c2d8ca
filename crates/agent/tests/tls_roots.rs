//! The HTTPS clients' TLS set-up (`havip_agent::tls`): building clients reads no CA roots (that cost ~5 ms
//! per client before `migrate-havip`'s first GARP); the first certificate check reads them, once, and
//! still refuses a server whose certificate chains to no trusted root.
//!
//! The roots are process-wide, so the checks run in a child process of this test binary, with
//! `SSL_CERT_FILE` naming a CA made here (rustls' native-cert loader reads it instead of the system
//! store). Two `openssl s_server -www` servers on 127.0.0.1 answer: one with a certificate from that CA,
//! one from another CA. Needs the `openssl` command (scripts/test installs it).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "HAVIP_TLS_ROOTS_CHILD";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the `openssl` command is needed (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<name>-ca.pem` and a server certificate `<name>.pem` (key `<name>.key`) it signed for 127.0.0.1.
fn make_pki(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = format!("{name}-ca");
    let mut args = vec!["req", "-x509", "-days", "1", "-subj"];
    let subj = format!("/CN={ca}");
    args.extend([subj.as_str(), "-keyout"]);
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    args.extend([ca_key.as_str(), "-out", ca_pem.as_str()]);
    args.extend(ec);
    openssl(dir, &args);
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let mut args = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    args.extend(ec);
    openssl(dir, &args);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            &pem,
        ],
    );
}

/// `openssl s_server -www` with `<name>.pem` on a free 127.0.0.1 port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, name: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-cert",
                &format!("{name}.pem"),
                "-key",
                &format!("{name}.key"),
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn roots_are_read_at_the_first_check_once_and_an_unknown_issuer_is_refused() {
    if std::env::var_os(CHILD).is_some() {
        return child_checks();
    }
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "trusted");
    make_pki(dir.path(), "stranger");
    let trusted = Server::start(dir.path(), "trusted");
    let stranger = Server::start(dir.path(), "stranger");
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "roots_are_read_at_the_first_check_once_and_an_unknown_issuer_is_refused",
            "--nocapture",
        ])
        .env(CHILD, format!("{} {}", trusted.port, stranger.port))
        .env("SSL_CERT_FILE", dir.path().join("trusted-ca.pem"))
        .env("SSL_CERT_DIR", &empty)
        // rustls-platform-verifier logs each reading of the roots at debug.
        .env("HAVIP_LOG", "debug")
        .output()
        .expect("running the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child's checks failed:\n{text}");
    assert!(
        text.contains("child checks passed"),
        "the child ran no check:\n{text}"
    );
    // Whoever reads them (this module or a client's own set-up), the roots are read once, after every
    // client was built.
    let built = text.find(CLIENTS_BUILT).expect("the child's marker");
    let reads: Vec<usize> = text.match_indices(ROOTS_READ).map(|(i, _)| i).collect();
    assert_eq!(
        reads.len(),
        1,
        "the roots were read {} times:\n{text}",
        reads.len()
    );
    assert!(
        reads[0] > built,
        "the roots were read while building clients:\n{text}"
    );
}

/// What the child prints once every client is built.
const CLIENTS_BUILT: &str = "--- every client built";
/// What rustls-platform-verifier logs when it reads the system's roots.
const ROOTS_READ: &str = "CA root certificates from the system";

/// In the child: `SSL_CERT_FILE` is the trusted CA; `HAVIP_TLS_ROOTS_CHILD` is "<trusted> <stranger>".
fn child_checks() {
    let ports: Vec<u16> = std::env::var(CHILD)
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    havip_agent::logging::init(havip_agent::logging::LogFormat::Human);
    rt.block_on(async {
        let client = || {
            reqwest::Client::builder()
                .tls_backend_preconfigured(havip_agent::tls::client_config())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap()
        };
        let (a, b) = (client(), client());
        // The product's own client for an https endpoint, as `migrate-havip` builds it before its GARP.
        let cloud: havip_agent::config::CloudConfig =
            toml::from_str("region = \"ap-guangzhou\"\nendpoint = \"https://127.0.0.1:1\"\n")
                .unwrap();
        let creds = havip_agent::credentials::CredentialProvider::fixed(
            havip_agent::credentials::Credential {
                secret_id: havip_agent::secret::Secret::new("AKIDtls"),
                secret_key: havip_agent::secret::Secret::new("tls-key"),
                token: None,
            },
        );
        havip_agent::cloud::VpcClient::new(&cloud, creds, havip_agent::clock::system()).unwrap();
        assert!(
            !havip_agent::tls::roots_loaded(),
            "building clients read the roots"
        );
        eprintln!("{CLIENTS_BUILT}");

        let ok = a
            .get(format!("https://127.0.0.1:{}/", ports[0]))
            .send()
            .await
            .expect("a server whose certificate chains to SSL_CERT_FILE's CA is accepted");
        assert!(ok.status().is_success(), "{}", ok.status());
        assert!(havip_agent::tls::roots_loaded(), "the check read the roots");

        let err = b
            .get(format!("https://127.0.0.1:{}/", ports[1]))
            .send()
            .await
            .expect_err("a certificate from an unknown CA is refused");
        let chain = havip_agent::logging::error_chain(&err);
        assert!(
            chain.contains("UnknownIssuer") || chain.contains("unknown issuer"),
            "{chain}"
        );
    });
    println!("child checks passed");
}
