//! The README's "Operating it" path, end to end inside a network namespace: `havip-demo --sandbox`
//! stands in for Tencent Cloud and a Sentinel deployment, a real `havip-agent run` (the kernel binder, the
//! HTTP endpoint) takes node 1, and `/healthz`, `/metrics`, `/status` and `havip-agent status` show a
//! healthy agent holding the VIP. Then a failover moves the VIP away and the agent releases it. The
//! sandbox writes its files in a temp directory unless told where, never replaces a file without `--force`,
//! and removes what it wrote (putting back what `--force` replaced) when it stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use havip_testkit::testbed::netns::Netns;

/// The real agent, built with the workspace.
fn agent_bin() -> std::path::PathBuf {
    havip_testkit::testbed::product_bin("havip-agent").expect("the havip-agent binary")
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
struct Proc(Child);

impl Proc {
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(ns: &Netns, url: &str) -> Option<(u16, String)> {
    let url = url.to_owned();
    ns.block_on(move || async move {
        havip_agent::tls::install_provider();
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let r = c.get(&url).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    })
}

fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sandbox_and_a_real_agent_give_a_running_healthy_agent() {
    let ns = Netns::new("sandbox").expect("create a network namespace (needs root and iproute2)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let env = dir.path().join("env");
    let lock = dir.path().join("lock");
    // An operator's existing config: --force replaces it for the sandbox's life and puts it back after.
    std::fs::write(&config, "# the operator's own config\n").unwrap();

    // Arrange: the sandbox, inside the namespace.
    let mut sandbox = Proc(
        ns.command(env!("CARGO_BIN_EXE_havip-demo"))
            .args(["--sandbox", "--interface", "sbx0"])
            .arg("--config-out")
            .arg(&config)
            .arg("--env-out")
            .arg(&env)
            .arg("--lock-dir")
            .arg(&lock)
            .arg("--force")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sandbox"),
    );
    let stdout = sandbox.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut master = String::new();
    for line in lines.by_ref() {
        let line = line.expect("sandbox output");
        if let Some(rest) = line.strip_prefix("redis master: ") {
            master = rest.split_whitespace().next().unwrap().to_owned();
        }
        if line.starts_with("stop the sandbox") {
            break;
        }
    }
    assert!(
        !master.is_empty() && config.exists() && env.exists(),
        "the sandbox did not get ready"
    );
    std::thread::spawn(move || for _ in lines {});

    // Act: a real agent with the written config and credentials.
    let creds = std::fs::read_to_string(&env).unwrap();
    let mut agent = ns.command(agent_bin());
    agent.args(["run", "--config"]).arg(&config);
    for kv in creds.lines() {
        let (k, v) = kv.split_once('=').unwrap();
        agent.env(k, v);
    }
    let mut agent = Proc(
        agent
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );

    // Assert: healthy, holding the VIP, the cloud agrees, metrics and status say so.
    poll(Duration::from_secs(30), "/healthz 200", || {
        get(&ns, "http://127.0.0.1:9847/healthz").filter(|(s, _)| *s == 200)
    });
    let status = poll(
        Duration::from_secs(30),
        "/status with the vip bound and confirmed",
        || {
            get(&ns, "http://127.0.0.1:9847/status").filter(|(_, body)| {
                body.contains("\"local_bound\":true") && body.contains("\"cloud_matches\":true")
            })
        },
    );
    assert!(status.1.contains("ins-fleet-1"), "{}", status.1);
    let addrs = ns.ipv4_addrs("sbx0").unwrap();
    assert!(
        addrs.iter().any(|a| a.starts_with("198.18.0.100/")),
        "{addrs:?}"
    );
    let (_, metrics) = get(&ns, "http://127.0.0.1:9847/metrics").unwrap();
    assert!(
        metrics.contains("havip_agent_local_holder{havip=\"havip-fleet001\"} 1"),
        "{metrics}"
    );
    let out = ns
        .command(agent_bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("havip-fleet001") && table.contains("running agent"),
        "{table}"
    );

    // A failover: the master's redis dies; another node takes over and this agent releases the VIP.
    let (host, port) = master.rsplit_once(':').unwrap();
    let _ = ns
        .command("redis-cli")
        .args(["-h", host, "-p", port, "SHUTDOWN", "NOSAVE"])
        .stdout(Stdio::null())
        .spawn();
    poll(
        Duration::from_secs(30),
        "the agent to release the vip after the failover",
        || {
            let addrs = ns.ipv4_addrs("sbx0").ok()?;
            (!addrs.iter().any(|a| a.starts_with("198.18.0.100/"))).then_some(())
        },
    );

    assert!(
        agent.terminate().is_some_and(|s| s.success()),
        "the agent did not stop cleanly on SIGTERM"
    );
    assert!(
        sandbox.terminate().is_some_and(|s| s.success()),
        "the sandbox did not stop cleanly on SIGTERM"
    );
    assert!(
        ns.ip(&["link", "show", "sbx0"]).is_err(),
        "the sandbox left its veth behind"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# the operator's own config\n",
        "the replaced config is put back"
    );
    assert!(!env.exists(), "the sandbox left its credentials file");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "config.toml" && n != "lock")
        .collect();
    assert!(left.is_empty(), "the sandbox left files behind: {left:?}");
}

/// Starts `havip-demo --sandbox` in `ns` with `args`; returns the process and the config path it printed.
fn start_sandbox(ns: &Netns, args: &[&std::ffi::OsStr]) -> (Proc, std::path::PathBuf) {
    let mut sandbox = Proc(
        ns.command(env!("CARGO_BIN_EXE_havip-demo"))
            .args(["--sandbox", "--interface", "sbx1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sandbox"),
    );
    let stdout = sandbox.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut config = None;
    for line in lines.by_ref() {
        let line = line.expect("sandbox output");
        if let Some(rest) = line.strip_prefix("node 1 is for a real agent: config ") {
            config = rest.split_whitespace().next().map(std::path::PathBuf::from);
        }
        if line.starts_with("stop the sandbox") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (
        sandbox,
        config.expect("the sandbox printed its config path"),
    )
}

#[test]
fn by_default_the_sandbox_writes_in_a_temp_dir_and_removes_it() {
    let ns =
        Netns::new("sandboxtmp").expect("create a network namespace (needs root and iproute2)");
    let lock = tempfile::tempdir().unwrap();
    let (mut sandbox, config) =
        start_sandbox(&ns, &["--lock-dir".as_ref(), lock.path().as_os_str()]);
    let dir = config.parent().unwrap().to_owned();
    assert!(
        dir.starts_with(std::env::temp_dir()) && config.is_file() && dir.join("env").is_file(),
        "config {} and env in a temp dir",
        config.display()
    );
    assert!(
        sandbox.terminate().is_some_and(|s| s.success()),
        "the sandbox did not stop cleanly on SIGTERM"
    );
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn the_sandbox_refuses_to_replace_a_file_without_force() {
    let ns =
        Netns::new("sandboxkeep").expect("create a network namespace (needs root and iproute2)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let env = dir.path().join("env");
    std::fs::write(&config, "# production\n").unwrap();
    let out = ns
        .command(env!("CARGO_BIN_EXE_havip-demo"))
        .args(["--sandbox", "--interface", "sbx2", "--config-out"])
        .arg(&config)
        .arg("--env-out")
        .arg(&env)
        .output()
        .expect("run the sandbox");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--config-out")
            && stderr.contains("config.toml")
            && stderr.contains("--force"),
        "names the flag, the file and the way out: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# production\n");
    assert!(!env.exists(), "nothing written after the refusal");
    assert!(
        ns.ip(&["link", "show", "sbx2"]).is_err(),
        "nothing created after the refusal"
    );
}
