//! `havip-agent run` and SIGTERM during start-up (issue 11): the signal handlers are installed first thing,
//! so a stop before READY=1 runs the shutdown policy (`agent.on_shutdown`) and exits 0 instead of the
//! process dying of the signal. Runs the real binary in a network namespace with a veth pair whose far end
//! answers nothing, so the Sentinel addresses lead nowhere, so the agent stays before READY (it waits up to 10 s for one).

mod lone_daemon;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;

use lone_daemon::{LoneHost, Proc, wait_for_line};

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
    let host = LoneHost::new("sigterm", 7, "[agent]\non_shutdown = \"release\"");
    let notify_path = host.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();

    let mut agent = Proc(
        host.agent_command()
            .env("NOTIFY_SOCKET", &notify_path)
            .env("TENCENTCLOUD_SECRET_ID", "AKIDsigtermtest")
            .env("TENCENTCLOUD_SECRET_KEY", "sigterm-test-key")
            .spawn()
            .expect("start the agent"),
    );
    let rx = agent.stderr_lines();
    let mut log = Vec::new();
    wait_for_line(&rx, &mut log, "starting havip-agent");
    let before = notifications(&notify);
    assert!(
        !before.iter().any(|m| m.contains("READY=1")),
        "the agent was ready already, so this would not test a stop before READY: {before:?}"
    );

    // Act
    let status = agent.terminate();
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
    let rx = agent.stderr_lines();
    let mut log = Vec::new();
    // Logged right after the signal handlers are installed, before the config is read.
    wait_for_line(&rx, &mut log, "open-file limit");
    // The agent's connection to the metadata service is pending: start-up is waiting on it.
    let (_held, _) = metadata.accept().unwrap();

    // Act
    let status = agent.terminate();
    log.extend(rx.iter());
    let log = log.join("\n");

    // Assert
    assert!(status.success(), "exit {status:?}, log:\n{log}");
    assert!(
        log.contains("sigterm during start-up, before the agent started: stopped"),
        "{log}"
    );
}
