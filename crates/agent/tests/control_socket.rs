//! The daemon's control socket and `migrate-havip` handing Sentinel's calls to it (issue 11: the Sentinel
//! drop-in grants nothing). An in-process agent over the fake cloud and fake Sentinels serves the socket
//! as `havip-agent run` does (`control::serve_agent`); `migrate-havip` runs as an unprivileged user this
//! test creates, with no capability at all (`setpriv --inh-caps=-all --bounding-set=-all --no-new-privs`)
//! in a user namespace of its own (`unshare --user`), as Debian's redis-sentinel.service runs its scripts
//! (no_new_privs, `PrivateUsers=true`), and a config naming no reachable cloud or Sentinel,
//! so anything it did itself would fail. The Sentinels poll every 10 minutes and publish no events: the
//! agent sees a switch only when something wakes it.
//! Needs root, `setpriv`, `unshare` (util-linux), `useradd`/`userdel`, `groupadd`/`groupdel`.

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use havip_agent::control::{self, ControlError, Limits};
use havip_testkit::fake::{FakeCloud, HavipSpec};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, INSTANCE_ID, InprocAgent, SECRET_ID, SECRET_KEY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

const MASTER: &str = "mymaster";
const HAVIP: &str = "havip-ctl00001";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const OTHER: &str = "198.18.0.3";
/// A bound on waiting on a loaded machine, not a speed claim.
const PATIENCE: Duration = Duration::from_secs(30);

/// A system group and a user in nothing but `nogroup`, both removed when the test ends, passing or not.
struct TempAccount {
    user: String,
    group: String,
    gid: u32,
}

impl TempAccount {
    fn create(tag: &str) -> TempAccount {
        // Unique per process and test; names are limited to 32 characters.
        let user = format!("hvc{}{tag}", std::process::id());
        let group = format!("hvg{}{tag}", std::process::id());
        let out = Command::new("groupadd")
            .args(["--system", &group])
            .output()
            .expect("groupadd (passwd) must be installed");
        assert!(out.status.success(), "groupadd {group}: {out:?}");
        // Owns the group from here on, so a failure below still removes it.
        let mut acct = TempAccount {
            user: user.clone(),
            group: group.clone(),
            gid: 0,
        };
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &user,
            ])
            .output()
            .expect("useradd (passwd) must be installed");
        assert!(out.status.success(), "useradd {user}: {out:?}");
        let out = Command::new("getent")
            .args(["group", &group])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let gid = line.split(':').nth(2).and_then(|g| g.parse().ok());
        acct.gid = gid.unwrap_or_else(|| panic!("no gid for {group}: {line:?}"));
        acct
    }
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// What the Sentinels' user has: a directory like /run/havip-agent (root, the group may enter), the
/// binary copied where the user may run it, and its own config.
struct World {
    cloud: FakeCloud,
    sentinels: Vec<FakeSentinel>,
    acct: TempAccount,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(tag: &str, master_ip: &str) -> World {
        let cloud = FakeCloud::start().await;
        cloud.add_key(SECRET_ID, SECRET_KEY);
        cloud.add_havip(HavipSpec::new(HAVIP, VIP).holder("ins-b"));
        let sentinels = (0..3)
            .map(|_| {
                FakeSentinel::start(Mode::Master {
                    ip: master_ip.parse().unwrap(),
                    epoch: 1,
                })
                .unwrap()
            })
            .collect();
        let acct = TempAccount::create(tag);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(0), Some(acct.gid)).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
        let bin = dir.path().join("migrate-havip");
        std::fs::copy(env!("CARGO_BIN_EXE_migrate-havip"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // migrate-havip's config: the same node, master and socket, but no cloud or Sentinel it could
        // reach (port 9 is closed): acting on its own could only fail.
        let text = format!(
            "[cloud]\nregion = \"ap-guangzhou\"\nendpoint = \"http://127.0.0.1:9\"\n\
             metadata_endpoint = \"http://127.0.0.1:9/\"\n\n[node]\ninstance_id = \"{INSTANCE_ID}\"\n\
             address = \"{ME}\"\ninterface = \"eth0\"\n\n[sentinel]\naddresses = [\"127.0.0.1:9\"]\n\n\
             [agent]\ncontrol_socket = \"{}\"\n\n[[havip]]\nmaster = \"{MASTER}\"\nhavip_id = \"{HAVIP}\"\n\
             vip = \"{VIP}/24\"\n",
            run.join("control.sock").display()
        );
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, text).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        World {
            cloud,
            sentinels,
            acct,
            dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    /// The agent: polls every 10 minutes, so only a wake-up makes it look again.
    fn agent(&self) -> InprocAgent {
        InprocAgent::builder(&self.cloud, &self.sentinels)
            .sentinel_toml("poll_interval = \"10m\"")
            .havip(HavipEntry::new(MASTER, HAVIP, VIP))
            .extra_toml(&format!(
                "[agent]\ncontrol_socket = \"{}\"\ncontrol_group = \"{}\"\n",
                self.socket().display(),
                self.acct.group
            ))
            .start()
            .unwrap()
    }

    fn serve(&self, agent: &InprocAgent) -> control::ControlServer {
        control::serve_agent(
            agent.agent(),
            &agent.status,
            &agent.config,
            ME.parse().unwrap(),
        )
        .unwrap()
    }

    fn switch_to(&self, ip: &str, epoch: u64) {
        for s in &self.sentinels {
            s.set(Mode::Master {
                ip: ip.parse().unwrap(),
                epoch,
            });
        }
    }

    /// `migrate-havip <args>` as the test user in the group, with no capability and no_new_privs, its
    /// config from the environment as Sentinel's would be.
    async fn migrate(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.acct.user,
            "--regid",
            "nogroup",
            "--groups",
            &self.acct.gid.to_string(),
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            // PrivateUsers=true, as Debian's unit has: the socket's group is not mapped in there, and the
            // supplementary group must still reach it.
            "unshare",
            "--user",
            "--map-current-user",
        ])
        .arg(self.dir.path().join("migrate-havip"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HAVIP_AGENT_CONFIG", self.dir.path().join("config.toml"));
        let out = tokio::time::timeout(PATIENCE * 2, cmd.output())
            .await
            .expect("migrate-havip ran past its deadline")
            .expect("setpriv (util-linux)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn holder(&self) -> Option<String> {
        self.cloud.havip(HAVIP).unwrap().instance_id
    }
}

fn reconfig_args(to: &str) -> Vec<&str> {
    vec![MASTER, "observer", "start", OTHER, "6379", to, "6379"]
}

/// Polls `f` every 25 ms until it holds, failing with `what` after [`PATIENCE`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the agent has decided on what the Sentinels said at its start (`addr` is the master).
async fn settled_on(agent: &InprocAgent, addr: &str) {
    until(&format!("the agent to follow {addr}"), || {
        agent.status.snapshot().havips.iter().any(|h| {
            h.majority_master.as_deref() == Some(&format!("{addr}:6379")) && h.last_switch.is_none()
        })
    })
    .await;
}

/// Sends raw bytes, closes its sending side, and reads the whole answer.
async fn try_raw(path: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path).await?;
    // The server may answer (and close) before reading everything, so a failed write is not an error.
    if s.write_all(bytes).await.is_ok() {
        let _ = s.shutdown().await;
    }
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("an answer")?;
    Ok(out)
}

async fn raw(path: &Path, bytes: &[u8]) -> String {
    try_raw(path, bytes).await.expect("a readable answer")
}

/// Connects, sends nothing, and reads the whole answer.
async fn silent(path: &Path) -> String {
    let mut s = UnixStream::connect(path).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("an answer")
        .expect("a readable answer");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_call_without_any_privilege_moves_the_vip_through_the_daemon() {
    // Arrange: the Sentinels name another host; the agent follows them and holds nothing.
    let w = World::new("mv", OTHER).await;
    let agent = w.agent();
    let server = w.serve(&agent);
    settled_on(&agent, OTHER).await;
    assert!(!agent.is_bound(VIP));

    // Act: a failover to this node, which the agent does not poll for; then Sentinel's call.
    w.switch_to(ME, 2);
    let started = Instant::now();
    let (code, stdout, stderr) = w.migrate(&reconfig_args(ME)).await;
    // For the record (cargo test -- --nocapture), not asserted: the whole call, process start included.
    eprintln!(
        "delegated claim: migrate-havip exited after {:?}",
        started.elapsed()
    );

    // Assert: the daemon moved it (bound here, the cloud names this instance) and said so; exit 0.
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("(held)"), "{stdout}");
    assert!(stdout.contains(&format!("{ME}:6379 (epoch 2)")), "{stdout}");
    assert!(agent.is_bound(VIP));
    assert_eq!(w.holder().as_deref(), Some(INSTANCE_ID));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_call_naming_this_node_does_not_move_the_vip_the_sentinels_decide() {
    // Arrange: the Sentinels name another host throughout.
    let w = World::new("rp", OTHER).await;
    let agent = w.agent();
    let server = w.serve(&agent);
    settled_on(&agent, OTHER).await;

    // Act: Sentinel replays an old call that named this node as the new master.
    let started = Instant::now();
    let (code, stdout, stderr) = w.migrate(&reconfig_args(ME)).await;
    eprintln!(
        "delegated replay: migrate-havip exited after {:?}",
        started.elapsed()
    );

    // Assert: nothing moved; the answer says who the Sentinels name.
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("(elsewhere)"), "{stdout}");
    assert!(
        stdout.contains(&format!("{OTHER}:6379 (epoch 1)")),
        "{stdout}"
    );
    assert!(!agent.is_bound(VIP));
    assert_eq!(w.holder().as_deref(), Some("ins-b"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_daemon_too() {
    let w = World::new("nt", OTHER).await;
    let agent = w.agent();
    let server = w.serve(&agent);
    settled_on(&agent, OTHER).await;
    w.switch_to(ME, 2);

    let (code, stdout, stderr) = w
        .migrate(&["+sdown", &format!("master {MASTER} {OTHER} 6379")])
        .await;

    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("(held)"), "{stdout}");
    assert!(agent.is_bound(VIP));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_and_without_capabilities_it_exits_2_naming_both() {
    let w = World::new("nd", OTHER).await;
    let (code, stdout, stderr) = w
        .migrate(&["--dry-run", "--master", MASTER, "--to", ME])
        .await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("daemon: not reachable"), "{stdout}");
    let (code, stdout, stderr) = w.migrate(&reconfig_args(ME)).await;
    assert_eq!(code, Some(2), "stdout: {stdout}\nstderr: {stderr}");
    for want in [
        "CAP_NET_ADMIN",
        "the daemon is not running",
        &w.socket().display().to_string(),
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_error_and_change_nothing() {
    // Arrange: after the agent settled, the Sentinels name this node; only a valid wake-up may show it.
    let w = World::new("br", OTHER).await;
    let agent = w.agent();
    let server = w.serve(&agent);
    settled_on(&agent, OTHER).await;
    w.switch_to(ME, 2);
    let sock = w.socket();

    // Act + assert: each bad request is answered `bad-request`, naming what is wrong.
    let long = format!("reconfig {}\n", "m".repeat(400));
    let cases: Vec<(&[u8], &str)> = vec![
        (b"claim mymaster 198.18.0.2\n", "is not a request"),
        (b"reconfig\n", "wrong number of words"),
        (b"notify mymaster sdown\n", "argument 1 (event-type)"),
        (long.as_bytes(), "longer than 256 bytes"),
        (b"reconfig \xff\xfe\n", "not UTF-8"),
        (b"", "empty request"),
    ];
    for (bytes, want) in cases {
        let a = raw(&sock, bytes).await;
        assert!(
            a.starts_with("bad-request ") && a.contains(want) && a.ends_with("nothing was done\n"),
            "{:?}: {a:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let a = silent(&sock).await;
    assert!(a.starts_with("bad-request no request within 2s"), "{a:?}");
    let a = raw(&sock, b"reconfig nosuch\n").await;
    assert!(
        a.starts_with("unknown-master ") && a.contains("\"nosuch\""),
        "{a}"
    );
    let a = raw(&sock, b"ping\n").await;
    assert!(a.starts_with("pong "), "{a}");

    // Nothing changed: no re-sample happened, so the agent still follows the other host.
    assert!(!agent.is_bound(VIP));
    assert_eq!(w.holder().as_deref(), Some("ins-b"));
    let st = agent.status.snapshot();
    assert_eq!(
        st.havips[0].majority_master.as_deref(),
        Some(format!("{OTHER}:6379").as_str())
    );

    // The control: a valid wake-up on the same socket does move it.
    let a = raw(&sock, b"reconfig mymaster\n").await;
    assert!(a.starts_with("held "), "{a}");
    assert!(agent.is_bound(VIP));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0660_in_its_group_and_replaces_only_a_stale_socket() {
    let w = World::new("md", OTHER).await;
    let agent = w.agent();
    let sock = w.socket();

    // A stale socket (nobody listens) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = w.serve(&agent);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (0, w.acct.gid));
    assert!(raw(&sock, b"ping\n").await.starts_with("pong "));
    // What the snippet's check line shows Sentinel's user: the daemon answers.
    let (code, stdout, stderr) = w
        .migrate(&["--dry-run", "--master", MASTER, "--to", ME])
        .await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("daemon: answers on {}", sock.display())),
        "{stdout}"
    );

    // A live one is not.
    let e = control::serve_agent(
        agent.agent(),
        &agent.status,
        &agent.config,
        ME.parse().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, ControlError::InUse { .. }), "{e}");
    assert!(
        e.to_string().contains("another process already listens"),
        "{e}"
    );
    assert!(raw(&sock, b"ping\n").await.starts_with("pong "));

    // Shutdown removes it.
    server.shutdown().await;
    assert!(!sock.exists());

    // A symlink or a file in the way is refused, and left alone.
    let target = w.dir.path().join("elsewhere");
    std::fs::write(&target, "keep me").unwrap();
    std::os::unix::fs::symlink(&target, &sock).unwrap();
    let e = control::serve_agent(
        agent.agent(),
        &agent.status,
        &agent.config,
        ME.parse().unwrap(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("it is a symlink, not a socket"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, "a file").unwrap();
    let e = control::serve_agent(
        agent.agent(),
        &agent.status,
        &agent.config,
        ME.parse().unwrap(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("it is a regular file, not a socket"),
        "{e}"
    );
    std::fs::remove_file(&sock).unwrap();

    // A missing directory and a missing group are named.
    let e = control::serve(
        &w.dir.path().join("absent/control.sock"),
        &w.acct.group,
        Arc::new(Never),
        Limits::for_config(&agent.config),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = control::serve(
        &sock,
        "no-such-group-hv",
        Arc::new(Never),
        Limits::for_config(&agent.config),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("group \"no-such-group-hv\" does not exist"),
        "{e}"
    );
}

/// A target that is never asked anything in these tests.
struct Never;

#[async_trait::async_trait]
impl control::Target for Never {
    fn knows(&self, _: &str) -> bool {
        true
    }
    async fn resample(&self, _: &str) {}
    fn judge(&self, _: &str) -> control::Judgement {
        control::Judgement {
            answer: control::Answer::parse("working never").unwrap(),
            settled: false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_blocked_by_a_silent_client_or_one_waiting_for_its_answer() {
    let w = World::new("sd", OTHER).await;
    let sock = w.socket();
    let cfg = {
        let agent = w.agent();
        agent.config.clone()
    };
    // Long read timeout and answer deadline: shutdown must not wait for either.
    let limits = Limits {
        read_timeout: Duration::from_secs(600),
        answer_deadline: Duration::from_secs(600),
        ..Limits::for_config(&cfg)
    };
    let server = control::serve(&sock, &w.acct.group, Arc::new(Never), limits).unwrap();
    let mut silent = UnixStream::connect(&sock).await.unwrap();
    let mut waiting = UnixStream::connect(&sock).await.unwrap();
    waiting.write_all(b"reconfig mymaster\n").await.unwrap();
    // Both are being served (the waiting one is in its answer loop).
    tokio::time::sleep(Duration::from_millis(100)).await;

    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("shutdown waited for a client");

    // Both clients see the connection closed, and the socket is gone.
    for s in [&mut silent, &mut waiting] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
    }
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_cap_get_busy_and_the_daemon_goes_on() {
    let w = World::new("cp", OTHER).await;
    let sock = w.socket();
    let agent = w.agent();
    let limits = Limits {
        max_connections: 4,
        read_timeout: Duration::from_secs(600),
        ..Limits::for_config(&agent.config)
    };
    let server = control::serve(&sock, &w.acct.group, Arc::new(Never), limits).unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(UnixStream::connect(&sock).await.unwrap());
    }
    let a = silent(&sock).await;
    assert!(a.starts_with("busy "), "{a}");
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Until the server has noticed the closed clients, a ping may still be refused (and reset).
        let a = try_raw(&sock, b"ping\n").await.unwrap_or_default();
        if a.starts_with("pong ") {
            break;
        }
        assert!(Instant::now() < deadline, "still {a}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.shutdown().await;
}
