//! `havip-agent run` and SIGTERM during start-up (issue 11): the signal handlers are installed first thing,
//! so a stop before READY=1 runs the shutdown policy (`agent.on_shutdown`) and exits 0 instead of the
//! process dying of the signal. Runs the real binary in a network namespace with a veth pair whose far end
//! answers nothing, so the Sentinel addresses lead nowhere, so the agent stays before READY (it waits up to 10 s for one).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
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

/// Reads the agent's stderr lines into a channel.
fn stderr_lines(agent: &mut Proc) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects lines until one contains `needle` (panics with the log at the deadline).
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

/// Sends SIGTERM and waits (bounded) for the exit.
fn terminate(agent: &mut Proc) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the agent in place).
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every sd_notify datagram received so far.
fn notifications(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn sigterm_before_ready_runs_the_shutdown_policy_and_exits_cleanly() {
    // Arrange: a namespace with a veth pair (nothing answers at the Sentinels' addresses),
    // a config releasing the VIP on shutdown, and a notify socket standing in for systemd.
    let ns = Netns::new("sigterm").expect("create a network namespace (needs root and iproute2)");
    ns.veth_pair_inside("sig0", "sig1").unwrap();
    ns.add_addr("sig0", "198.18.7.2/24").unwrap();
    ns.set_up("sig0").unwrap();
    ns.set_up("sig1").unwrap();
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
instance_id = "ins-sigterm1"
address = "198.18.7.2"
interface = "sig0"

[sentinel]
addresses = ["198.18.7.50:26379", "198.18.7.51:26379", "198.18.7.52:26379"]

[[havip]]
master = "mymaster"
havip_id = "havip-sigterm1"
vip = "198.18.7.250/24"

[claim]
lock_dir = "{}"

[agent]
on_shutdown = "release"
"#,
            lock.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();

    let mut agent = Proc(
        ns.command(env!("CARGO_BIN_EXE_havip-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("TENCENTCLOUD_SECRET_ID", "AKIDsigtermtest")
            .env("TENCENTCLOUD_SECRET_KEY", "sigterm-test-key")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent"),
    );
    let rx = stderr_lines(&mut agent);
    let mut log = Vec::new();
    wait_for_line(&rx, &mut log, "starting havip-agent");
    let before = notifications(&notify);
    assert!(
        !before.iter().any(|m| m.contains("READY=1")),
        "the agent was ready already, so this would not test a stop before READY: {before:?}"
    );

    // Act
    let status = terminate(&mut agent);
    log.extend(rx.iter());
    let log = log.join("\n");
    let sent = notifications(&notify);

    // Assert: a clean exit through the shutdown path, and systemd never told READY.
    assert!(status.success(), "exit {status:?}, log:\n{log}");
    assert!(log.contains("sigterm before ready: stopping"), "{log}");
    assert!(log.contains("agent.on_shutdown = release"), "{log}");
    assert!(
        log.contains("raised the open-file limit") || log.contains("already at its hard limit"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    assert!(!sent.iter().any(|m| m.contains("READY=1")), "{sent:?}");
    assert!(sent.iter().any(|m| m.contains("STOPPING=1")), "{sent:?}");
}

#[test]
fn sigterm_while_start_up_waits_for_the_metadata_service_exits_cleanly() {
    // Arrange: a metadata service that accepts and never answers, and `instance_id = "auto"`, so start-up
    // waits on it (no namespace needed: the agent never gets as far as the interface).
    let metadata = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = metadata.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[cloud]
region = "ap-guangzhou"
metadata_endpoint = "http://127.0.0.1:{port}/latest/meta-data/"

[node]
interface = "lo"

[sentinel]
addresses = ["127.0.0.1:1"]

[[havip]]
master = "mymaster"
havip_id = "havip-sigterm2"
vip = "198.18.7.250/24"
"#
        ),
    )
    .unwrap();
    let mut agent = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_havip-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent"),
    );
    let rx = stderr_lines(&mut agent);
    let mut log = Vec::new();
    // Logged right after the signal handlers are installed, before the config is read.
    wait_for_line(&rx, &mut log, "open-file limit");
    // The agent's connection to the metadata service is pending: start-up is waiting on it.
    let (_held, _) = metadata.accept().unwrap();

    // Act
    let status = terminate(&mut agent);
    log.extend(rx.iter());
    let log = log.join("\n");

    // Assert
    assert!(status.success(), "exit {status:?}, log:\n{log}");
    assert!(
        log.contains("sigterm during start-up, before the agent started: stopped"),
        "{log}"
    );
}
