//! A real `havip-agent run` alone in a network namespace this test creates: a veth pair with the node's
//! address, three Sentinel addresses nobody answers on, a cloud endpoint that refuses connections, and a
//! lock directory in a temp dir. For tests of the process itself (signals, the control socket). Everything is
//! removed on drop; the process is killed on drop.

#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use havip_testkit::testbed::netns::Netns;

/// A bound on waiting (not a speed claim).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The namespace, the temp dir with `config.toml` and `lock/`, and where the config lives.
pub struct LoneHost {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub lock: PathBuf,
    pub config: PathBuf,
}

impl LoneHost {
    /// `name` (a-z, 1..=8 characters) names the namespace, the interface (`<name>0`) and the ids; the node
    /// is `198.18.<octet>.2/24` and the VIP `198.18.<octet>.250`. `extra` is appended to the config.
    pub fn new(name: &str, octet: u8, extra: &str) -> LoneHost {
        let ns = Netns::new(name).expect("create a network namespace (needs root and iproute2)");
        let (a, b) = (format!("{name}0"), format!("{name}1"));
        ns.veth_pair_inside(&a, &b).unwrap();
        ns.add_addr(&a, &format!("198.18.{octet}.2/24")).unwrap();
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
instance_id = "ins-{name}1"
address = "198.18.{octet}.2"
interface = "{a}"

[sentinel]
addresses = ["198.18.{octet}.50:26379", "198.18.{octet}.51:26379", "198.18.{octet}.52:26379"]

[[havip]]
master = "mymaster"
havip_id = "havip-{name}1"
vip = "198.18.{octet}.250/24"

[claim]
lock_dir = "{lock}"

{extra}
"#,
                lock = lock.display()
            ),
        )
        .unwrap();
        LoneHost {
            ns,
            dir,
            lock,
            config,
        }
    }

    /// `havip-agent run` with this config inside the namespace, stderr piped, ready for more `env`.
    pub fn agent_command(&self) -> Command {
        let mut c = self.ns.command(env!("CARGO_BIN_EXE_havip-agent"));
        c.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

/// A child process killed on drop, so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Reads its stderr lines into a channel.
    pub fn stderr_lines(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = self.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the agent in place).
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Collects lines until one contains `needle` (panics with the log at the deadline).
pub fn wait_for_line(rx: &mpsc::Receiver<String>, log: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !log.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no log line with {needle:?}:\n{}", log.join("\n")),
        }
    }
}
