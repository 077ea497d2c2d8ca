//! The real `havip-agent run` serves its control socket: created at start with mode 0660 in its group,
//! answering wake-ups with what the daemon sees, and closed (and removed) on SIGTERM even with a client
//! connected that never sends anything. Runs the binary in a network namespace whose Sentinel addresses
//! lead nowhere, so the honest answer to a wake-up is `no-majority`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use havip_testkit::testbed::netns::Netns;

/// A bound on waiting (not a speed claim).
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed on drop, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects stderr lines until one contains `needle` (panics with the log at the deadline).
fn wait_for_line(rx: &mpsc::Receiver<String>, log: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !log.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no log line with {needle:?}:\n{}", log.join("\n")),
        }
    }
}

/// A log line without its colours (the human format colours field names).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the escape sequence (`ESC [ ... m`).
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One request, one answer line.
fn ask(path: &std::path::Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn the_daemon_serves_its_control_socket_and_a_silent_client_does_not_delay_its_stop() {
    // Arrange: a namespace whose Sentinels answer nothing, and a config with the socket in a temp dir.
    let ns = Netns::new("ctlrun").expect("create a network namespace (needs root and iproute2)");
    ns.veth_pair_inside("ctl0", "ctl1").unwrap();
    ns.add_addr("ctl0", "198.18.8.2/24").unwrap();
    ns.set_up("ctl0").unwrap();
    ns.set_up("ctl1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    std::fs::create_dir(&lock).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[cloud]
region = "ap-guangzhou"
endpoint = "http://127.0.0.1:9"
metadata_endpoint = "http://127.0.0.1:9/latest/meta-data/"
keep_warm = "0s"

[node]
instance_id = "ins-ctlrun1"
address = "198.18.8.2"
interface = "ctl0"

[sentinel]
addresses = ["198.18.8.50:26379", "198.18.8.51:26379", "198.18.8.52:26379"]

[[havip]]
master = "mymaster"
havip_id = "havip-ctlrun1"
vip = "198.18.8.250/24"

[claim]
lock_dir = "{}"

[agent]
control_group = "root"
"#,
            lock.display()
        ),
    )
    .unwrap();
    let socket = lock.join("control.sock");

    let mut agent = Proc(
        ns.command(env!("CARGO_BIN_EXE_havip-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    wait_for_line(&rx, &mut log, "control socket listening");

    // Assert: the socket, its mode and group (the default path: control.sock in claim.lock_dir).
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.gid(), 0);
    assert!(ask(&socket, "ping\n").starts_with("pong "));
    // A wake-up gets the daemon's honest view: no Sentinel in sight, so nothing moves.
    let a = ask(&socket, "reconfig mymaster\n");
    assert!(
        a.starts_with("no-majority ") && a.contains("havip-ctlrun1: only 0 of 3 sentinels"),
        "{a}"
    );
    // Logged with the caller's uid (this test runs as root).
    wait_for_line(&rx, &mut log, "reconfig mymaster");
    assert!(
        log.iter()
            .map(|l| plain(l))
            .any(|l| l.contains("control socket: wake-up")
                && l.contains(" uid=0 ")
                && l.contains("request=reconfig mymaster")),
        "{}",
        log.join("\n")
    );

    // Act: a client connects and stays silent; then SIGTERM.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the agent in place).
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop with a silent client connected:\n{}",
            log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    log.extend(rx.iter());

    // Assert: a clean stop, the client dropped, the socket removed.
    assert!(status.success(), "exit {status:?}:\n{}", log.join("\n"));
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
    assert!(!socket.exists(), "the socket outlived the daemon");
    assert!(
        log.iter().any(|l| l.contains("control socket closed")),
        "{}",
        log.join("\n")
    );
}
