//! The real `havip-agent run` serves its control socket: created at start with mode 0660 in its group,
//! answering wake-ups with what the daemon sees, and closed (and removed) on SIGTERM even with a client
//! connected that never sends anything. Runs the binary in a network namespace whose Sentinel addresses
//! lead nowhere, so the honest answer to a wake-up is `no-majority`.

mod lone_daemon;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;

use lone_daemon::{LoneHost, PATIENCE, Proc, wait_for_line};

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
    let host = LoneHost::new("ctlrun", 8, "[agent]\ncontrol_group = \"root\"");
    let socket = host.lock.join("control.sock");

    let mut agent = Proc(host.agent_command().spawn().expect("start the agent"));
    let rx = agent.stderr_lines();
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
        log.iter().any(|l| l.contains("control socket: wake-up")
            && l.contains(" uid=0 ")
            && l.contains("request=reconfig mymaster")),
        "{}",
        log.join("\n")
    );

    // Act: a client connects and stays silent; then SIGTERM.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let status = agent.terminate();
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
