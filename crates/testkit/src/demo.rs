//! `havip-demo`: watch a real Sentinel failover move a VIP, in under a minute, on any machine with
//! `redis-server` and `redis-sentinel`.
//!
//! Owns the newcomer's story: start three Redis + three Sentinels on loopback addresses in a temp dir, the
//! fake Tencent Cloud in process and one agent per node (`testbed::agents`), kill the master, and print a
//! timeline with millisecond offsets from the fault. The local bind is simulated (the agents bind on
//! in-memory interfaces whose GARPs reach the fake cloud, as the VPC would see them): the demo never touches
//! this machine's interfaces, so it needs no root. Everything is removed at the end, also on Ctrl-C.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::testbed::agents::{Fleet, FleetSpec, HAVIP_ID, VIP};
use havip_agent::claim::Step;
use havip_agent::daemon::{AgentEvent, AgentEventKind};
use havip_agent::sentinel::Event;

/// Arguments of `havip-demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to wait for each step before saying it failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
    /// Keep a sandbox running instead of the failover story: three Redis + Sentinels, the fake cloud, and a
    /// config for a real `havip-agent run` as node 1 (binding on a veth pair the sandbox creates). Needs
    /// root. Runs until Ctrl-C or SIGTERM, then removes everything.
    #[arg(long)]
    pub sandbox: bool,
    /// Sandbox: where to write node 1's config (readable by the havip-agent group if it exists). Default:
    /// `config.toml` in a new temp directory. Removed when the sandbox stops.
    #[arg(long, value_name = "PATH")]
    pub config_out: Option<std::path::PathBuf>,
    /// Sandbox: where to write the fake cloud's credentials as an environment file (mode 0600). Default:
    /// `env` in the same temp directory. Removed when the sandbox stops.
    #[arg(long, value_name = "PATH")]
    pub env_out: Option<std::path::PathBuf>,
    /// Sandbox: replace existing --config-out / --env-out files. The originals are moved aside
    /// (`<file>.havip-demo-orig`) and put back when the sandbox stops.
    #[arg(long)]
    pub force: bool,
    /// Sandbox: the veth the real agent binds on (its peer is `<name>p`, watched by the fake cloud).
    #[arg(long, value_name = "NAME", default_value = "havip-sbx0")]
    pub interface: String,
    /// Sandbox: `claim.lock_dir` in the written config.
    #[arg(long, value_name = "DIR", default_value = "/run/havip-agent")]
    pub lock_dir: std::path::PathBuf,
    /// Sandbox: `[metrics] listen` in the written config.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9847")]
    pub metrics_listen: std::net::SocketAddr,
}

/// A demo step that did not happen.
#[derive(Debug, thiserror::Error)]
#[error("demo failed at step {step:?}: {detail}")]
pub struct DemoError {
    /// The step.
    pub step: &'static str,
    /// What was seen instead.
    pub detail: String,
}

fn fail(step: &'static str, detail: impl Into<String>) -> DemoError {
    DemoError {
        step,
        detail: detail.into(),
    }
}

/// Runs the demo; returns the exit code (0 on success, 1 when a step failed, 2 when it cannot start,
/// 130 on Ctrl-C).
pub async fn run(args: DemoArgs) -> u8 {
    for tool in ["redis-server", "redis-sentinel"] {
        if which(tool).is_none() {
            eprintln!(
                "havip-demo: {tool} is not installed: run `sudo apt-get install -y redis-server redis-sentinel`"
            );
            return 2;
        }
    }
    if args.sandbox {
        return sandbox::run(args).await;
    }
    println!(
        "havip-demo: a real Redis Sentinel failover moving a HAVIP (fake Tencent Cloud, in process)"
    );
    println!(
        "local bind: simulated (in-memory interfaces; nothing on this machine's network is touched, no root needed)"
    );
    let fleet = tokio::select! {
        f = Fleet::start(FleetSpec::default()) => match f {
            Ok(f) => f,
            Err(e) => {
                eprintln!("havip-demo: {:#}", fail("start the redis lab, the fake cloud and the agents", format!("{e:#}")));
                return 2;
            }
        },
        _ = tokio::signal::ctrl_c() => { eprintln!("interrupted"); return 130; }
    };
    let code = tokio::select! {
        r = story(&fleet, &args) => match r {
            Ok(()) => 0,
            Err(e) => { eprintln!("havip-demo: {e}"); 1 }
        },
        _ = tokio::signal::ctrl_c() => { eprintln!("interrupted: cleaning up"); 130 }
    };
    fleet.shutdown().await;
    println!("cleaned up: every redis-server, redis-sentinel and temp file of the demo is gone");
    code
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn story(fleet: &Fleet, args: &DemoArgs) -> Result<(), DemoError> {
    for n in &fleet.nodes {
        println!(
            "node{}: redis {}  sentinel {}  instance {}",
            n.index + 1,
            fleet.lab.redis_addr(n.index),
            fleet.lab.sentinel_addr(n.index),
            n.instance_id
        );
    }
    println!(
        "fake cloud: {}  havip {HAVIP_ID}  vip {VIP}  drift-range limiting on, range empty at start",
        fleet.cloud.endpoint()
    );

    let master = fleet
        .lab
        .wait_master(|_| true, args.step_timeout)
        .await
        .map_err(|e| fail("sentinels agree on the initial master", format!("{e:#}")))?;
    let m = fleet
        .lab
        .node_of(master)
        .ok_or_else(|| fail("initial master", "not a lab host"))?;
    let settled = wait_until(args.step_timeout, || {
        fleet.holders() == vec![m] && fleet.cloud_holder() == Some(m)
    })
    .await;
    if !settled {
        return Err(fail(
            "initial claim",
            format!(
                "holders {:?}, cloud holder {:?}",
                fleet.holders(),
                fleet.cloud_holder()
            ),
        ));
    }
    println!(
        "initial state: node{} is master and holds the vip; the cloud agrees",
        m + 1
    );

    let mut rxs: Vec<broadcast::Receiver<AgentEvent>> =
        fleet.nodes.iter().map(|n| n.events.subscribe()).collect();
    let fault_at = Instant::now();
    let fault_wall = SystemTime::now();
    fleet.lab.kill_redis(m);
    println!(
        "\nfault: killed redis-server on node{} (SIGKILL); waiting for Sentinel and the agents...\n",
        m + 1
    );

    let moved = wait_until(args.step_timeout, || {
        let h = fleet.holders();
        h.len() == 1 && h[0] != m && fleet.cloud_holder() == Some(h[0])
    })
    .await;
    // Let the winner's confirm loop report.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events: Vec<(usize, AgentEvent)> = Vec::new();
    for (i, rx) in rxs.iter_mut().enumerate() {
        while let Ok(e) = rx.try_recv() {
            events.push((i, e));
        }
    }
    events.sort_by_key(|(_, e)| e.at);
    print!("{}", timeline(fleet, m, fault_at, fault_wall, &events));
    if !moved {
        let switched = events.iter().any(|(_, e)| matches!(&e.kind, AgentEventKind::Sentinel(o) if matches!(o.event, Event::SwitchMaster { .. })));
        let step = if !switched {
            "sentinel switches to a new master"
        } else if fleet.holders().len() != 1 {
            "the new master's agent binds the vip (and only it)"
        } else {
            "the cloud moves the havip to the new master"
        };
        return Err(fail(
            step,
            format!(
                "holders {:?}, cloud holder {:?}\n{}",
                fleet.holders(),
                fleet.cloud_holder(),
                fleet.lab.logs_tail(10)
            ),
        ));
    }
    let new = fleet.holders()[0];
    println!(
        "\nresult: node{} holds the vip and the cloud agrees; node{} released it.",
        new + 1,
        m + 1
    );
    Ok(())
}

/// The failover as a readable table of millisecond offsets from the fault.
fn timeline(
    fleet: &Fleet,
    old: usize,
    fault_at: Instant,
    fault_wall: SystemTime,
    events: &[(usize, AgentEvent)],
) -> String {
    let ms = |at: Instant| -> f64 {
        if at >= fault_at {
            (at - fault_at).as_secs_f64() * 1e3
        } else {
            -((fault_at - at).as_secs_f64() * 1e3)
        }
    };
    let wall_ms = |at: SystemTime| -> f64 {
        match at.duration_since(fault_wall) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => -(e.duration().as_secs_f64() * 1e3),
        }
    };
    let mut rows: Vec<(f64, String)> =
        vec![(0.0, format!("fault: redis on node{} killed", old + 1))];
    let mut seen_sentinel = std::collections::HashSet::new();
    for (i, e) in events {
        let who = format!("node{}", i + 1);
        match &e.kind {
            AgentEventKind::Sentinel(o) => {
                // Each agent sees every Sentinel's events; show each event once, from the first agent.
                let key = (o.sentinel.clone(), o.channel.clone(), o.payload.clone());
                if !seen_sentinel.insert(key) {
                    continue;
                }
                let label = match &o.event {
                    Event::SwitchMaster { new, .. } => {
                        format!("sentinel switch: +switch-master to {}:{}", new.0, new.1)
                    }
                    Event::PromotedSlave { addr, .. } => {
                        format!("sentinel: +promoted-slave {}:{}", addr.0, addr.1)
                    }
                    _ => format!("sentinel: {}", o.channel),
                };
                if matches!(
                    o.channel.as_str(),
                    "+sdown"
                        | "-sdown"
                        | "+config-update-from"
                        | "+failover-state-reconf-slaves"
                        | "+slave-reconf-sent"
                ) {
                    continue;
                }
                rows.push((ms(e.at), format!("{label}  (from sentinel {})", o.sentinel)));
            }
            AgentEventKind::Decision {
                desired: true,
                actions,
                ..
            } if !actions.is_empty() => {
                rows.push((
                    ms(e.at),
                    format!(
                        "{who} agent decision: this node is the newest master, claim ({})",
                        e.failover_id.clone().unwrap_or_default()
                    ),
                ));
            }
            AgentEventKind::Claim(Step::Associated) => rows.push((
                ms(e.at),
                format!("{who}: drift-range association (AssociateHaVipInstance)"),
            )),
            AgentEventKind::Claim(Step::Bound { already: false }) => {
                rows.push((ms(e.at), format!("{who}: vip bound")))
            }
            AgentEventKind::Claim(Step::Announced { frames: 2 }) => {
                rows.push((ms(e.at), format!("{who}: announce (first gratuitous ARP)")))
            }
            AgentEventKind::Claim(Step::Confirmed) => rows.push((
                ms(e.at),
                format!(
                    "{who}: cloud confirms (DescribeHaVips names {})",
                    fleet.nodes[*i].instance_id
                ),
            )),
            AgentEventKind::Released { reason } => {
                rows.push((ms(e.at), format!("{who}: vip released ({reason})")))
            }
            _ => {}
        }
    }
    for mv in fleet.cloud.moves() {
        let t = wall_ms(mv.at);
        if t >= 0.0 {
            rows.push((
                t,
                format!(
                    "fake cloud: havip moved {} -> {}",
                    mv.from.as_deref().unwrap_or("-"),
                    mv.to
                ),
            ));
        }
    }
    for r in fleet.cloud.write_requests() {
        let t = wall_ms(r.at);
        if t < 0.0 && r.action == "AssociateHaVipInstance" {
            rows.push((
                t,
                format!(
                    "before the fault: {} (the agent adds its instance ahead of any failover)",
                    r.action
                ),
            ));
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = String::from("timeline (ms from the fault)\n");
    for (t, what) in rows {
        let _ = writeln!(out, "{t:>10.1}  {what}");
    }
    out
}

mod sandbox {
    //! `havip-demo --sandbox`: the fake cloud and a Sentinel lab kept running for a real agent.

    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::{DemoArgs, which};
    use crate::fake::watch_garp;
    use crate::testbed::agents::{Fleet, FleetSpec, SECRET_ID, SECRET_KEY};

    /// The sandbox veth's own address, in the subnet of the fleet's VIP (`testbed::agents::VIP`).
    const SANDBOX_NODE_ADDR: &str = "198.18.0.254/24";

    /// Removes the veth pair on drop.
    struct Veth(String);

    impl Veth {
        fn create(name: &str) -> anyhow::Result<(Veth, [u8; 6])> {
            anyhow::ensure!(
                name.len() <= 14,
                "--interface {name:?}: at most 14 characters (the peer adds \"p\")"
            );
            let ip = |args: &[&str]| -> anyhow::Result<()> {
                let out = Command::new("ip").args(args).output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            };
            let peer = format!("{name}p");
            ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
            let veth = Veth(name.to_owned());
            ip(&["link", "set", name, "up"])?;
            ip(&["link", "set", &peer, "up"])?;
            // The agent binds a VIP only inside the subnet of an address already on its interface (as on a
            // CVM, whose ENI has its primary address in the HAVIP's subnet): give the veth one.
            ip(&["addr", "add", SANDBOX_NODE_ADDR, "dev", name])?;
            let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
            let mac = havip_agent::metadata::parse_mac(mac.trim())
                .ok_or_else(|| anyhow::anyhow!("cannot read the MAC of {name}"))?;
            Ok((veth, mac))
        }
    }

    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }

    /// The files the sandbox writes, decided before anything starts. They are removed on drop, and a file
    /// `--force` replaced is put back; the default temp directory goes with them.
    struct Outputs {
        config: PathBuf,
        env: PathBuf,
        force: bool,
        /// What was written, with the original moved aside, if any.
        written: Vec<(PathBuf, Option<PathBuf>)>,
        _dir: Option<tempfile::TempDir>,
    }

    impl Outputs {
        /// Resolves the paths and refuses, before anything starts, to replace a file without `--force`.
        fn plan(args: &DemoArgs) -> anyhow::Result<Outputs> {
            let dir = match (&args.config_out, &args.env_out) {
                (Some(_), Some(_)) => None,
                _ => Some(
                    tempfile::Builder::new()
                        .prefix("havip-sandbox-")
                        .tempdir()?,
                ),
            };
            let in_dir = |name: &str| dir.as_ref().map(|d| d.path().join(name));
            let out = Outputs {
                config: args
                    .config_out
                    .clone()
                    .or_else(|| in_dir("config.toml"))
                    .unwrap_or_default(),
                env: args
                    .env_out
                    .clone()
                    .or_else(|| in_dir("env"))
                    .unwrap_or_default(),
                force: args.force,
                written: Vec::new(),
                _dir: dir,
            };
            for (flag, path) in [("--config-out", &out.config), ("--env-out", &out.env)] {
                anyhow::ensure!(
                    args.force || path.symlink_metadata().is_err(),
                    "{flag} {}: the file exists; pass --force to replace it (the original is moved \
                     aside and put back when the sandbox stops)",
                    path.display()
                );
            }
            Ok(out)
        }

        /// Writes `text` to `path` with `mode` (and `group`, if that group exists) in one step: a temp file in
        /// the same directory, renamed into place. Without `--force` the rename never replaces a file; with it
        /// the original (or the symlink itself, never its target) is moved aside first.
        fn write(
            &mut self,
            path: &Path,
            text: &str,
            mode: u32,
            group: Option<&str>,
        ) -> anyhow::Result<()> {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(parent)?;
            std::fs::write(tmp.path(), text)?;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
            if let Some(g) = group.and_then(gid_of) {
                std::os::unix::fs::chown(tmp.path(), None, Some(g))?;
            }
            let mut aside = None;
            if self.force && path.symlink_metadata().is_ok() {
                let orig = PathBuf::from(format!("{}.havip-demo-orig", path.display()));
                anyhow::ensure!(
                    orig.symlink_metadata().is_err(),
                    "{} exists from an earlier sandbox: put it back or remove it first",
                    orig.display()
                );
                std::fs::rename(path, &orig)?;
                aside = Some(orig);
            }
            match tmp.persist_noclobber(path) {
                Ok(_) => {
                    self.written.push((path.to_owned(), aside));
                    Ok(())
                }
                Err(e) => {
                    if let Some(orig) = aside {
                        let _ = std::fs::rename(orig, path);
                    }
                    Err(anyhow::anyhow!("writing {}: {}", path.display(), e.error))
                }
            }
        }

        fn write_config(&mut self, text: &str) -> anyhow::Result<()> {
            let path = self.config.clone();
            self.write(&path, text, 0o640, Some("havip-agent"))
        }

        fn write_env(&mut self, text: &str) -> anyhow::Result<()> {
            let path = self.env.clone();
            self.write(&path, text, 0o600, None)
        }
    }

    impl Drop for Outputs {
        fn drop(&mut self) {
            for (path, aside) in self.written.drain(..).rev() {
                let _ = std::fs::remove_file(&path);
                if let Some(orig) = aside {
                    let _ = std::fs::rename(&orig, &path);
                }
            }
        }
    }

    fn gid_of(group: &str) -> Option<u32> {
        let c = std::ffi::CString::new(group).ok()?;
        // SAFETY: getgrnam returns a pointer into static storage or null; read once, immediately.
        let gr = unsafe { libc::getgrnam(c.as_ptr()) };
        (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
    }

    pub(super) async fn run(args: DemoArgs) -> u8 {
        match sandbox(&args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("havip-demo --sandbox: {e:#}");
                2
            }
        }
    }

    async fn sandbox(args: &DemoArgs) -> anyhow::Result<()> {
        // SAFETY: geteuid has no preconditions.
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "the sandbox creates a veth pair for the agent to bind on: run it as root"
        );
        anyhow::ensure!(
            which("ip").is_some(),
            "`ip` is not installed: apt-get install -y iproute2"
        );
        // Before anything is created, and long before "stop the sandbox" is printed: a SIGTERM right after
        // that line must find the handler, not kill the process with everything left behind.
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let mut outputs = Outputs::plan(args)?;
        let (veth, mac) = Veth::create(&args.interface)?;
        let spec = FleetSpec {
            external: Some((0, mac)),
            external_interface: Some(args.interface.clone()),
            metrics_listen: Some(args.metrics_listen),
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await?;
        // The fake VPC sees the real agent's GARPs on the peer of its veth.
        let watch = watch_garp(fleet.cloud.clone(), &format!("{}p", args.interface))?;
        let config = fleet.nodes[0].config_text.replace(
            &format!(
                "lock_dir = \"{}\"",
                lock_dir_of(&fleet.nodes[0].config_text)
            ),
            &format!("lock_dir = \"{}\"", args.lock_dir.display()),
        );
        outputs.write_config(&config)?;
        outputs.write_env(&format!(
            "TENCENTCLOUD_SECRET_ID={SECRET_ID}\nTENCENTCLOUD_SECRET_KEY={SECRET_KEY}\n"
        ))?;
        println!(
            "sandbox ready: 3 redis + 3 sentinels, the fake tencent cloud at {}",
            fleet.cloud.endpoint()
        );
        println!(
            "node 1 is for a real agent: config {} (credentials of the fake cloud in {})",
            outputs.config.display(),
            outputs.env.display()
        );
        println!(
            "nodes 2 and 3 run simulated agents in this process; the vip is bound on {} by node 1's agent",
            args.interface
        );
        println!(
            "redis master: {} (to watch a failover: redis-cli -h {} -p {} shutdown nosave)",
            fleet.lab.redis_addr(0),
            fleet.lab.redis_addr(0).ip(),
            fleet.lab.redis_addr(0).port()
        );
        println!(
            "run the agent:  env $(cat {}) havip-agent run --config {}",
            outputs.env.display(),
            outputs.config.display()
        );
        println!("stop the sandbox with Ctrl-C (or SIGTERM); it removes everything it created");
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        drop(watch);
        fleet.shutdown().await;
        drop(veth);
        drop(outputs);
        println!("sandbox removed");
        Ok(())
    }

    fn lock_dir_of(config: &str) -> String {
        config
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("lock_dir = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .unwrap_or_default()
            .to_owned()
    }
}
