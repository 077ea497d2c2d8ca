//! The VIP managers the lab compares: the agent (`havip-agent run`), `migrate-havip` as Sentinel's
//! client-reconfig-script, the seed's `notify_mymaster.sh`, and the seed's keepalived set-up.
//!
//! Owns, per method: the files each host gets (agent config, rendered seed script, keepalived config), what
//! Sentinel must be told (reconfig script, its environment), the initial claim an operator would make, and
//! the long-running processes (agents, keepalived) with kill and restart for the scenarios. Processes start
//! inside the host namespaces, log to files in the run's directory and are killed on drop. It does not
//! decide when anything happens (see `lab::scenario`).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::topology::{
    DriftRange, HOST_IPS, HavipEntry, MASTER_NAME, PREFIX, REDIS_PORT, SECRET_ID, SECRET_KEY,
    SENTINEL_PORT, Topology, VIP,
};
use havip_testkit::testbed::netns::Lab;

/// The seed's client-reconfig-script, with `@...@` placeholders.
pub const SEED_SCRIPT: &str = include_str!("../../../deploy/seed/notify_mymaster.sh");
/// The seed's keepalived config, with `@...@` placeholders.
pub const SEED_KEEPALIVED_CONF: &str = include_str!("../../../deploy/seed/keepalived.conf");
/// The seed's vrrp_script check, with `@...@` placeholders.
pub const SEED_CHECK_SCRIPT: &str = include_str!("../../../deploy/seed/check_redis_master.sh");

/// A VIP manager under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `havip-agent run` on every host.
    Agent,
    /// `migrate-havip` as Sentinel's client-reconfig-script.
    Migrate,
    /// The seed's `notify_mymaster.sh` (`ip addr` + `arping`) as client-reconfig-script.
    SeedScript,
    /// keepalived with the seed's `vrrp_script` (role:master, interval 1, fall 2, rise 1).
    Keepalived,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 4] = [
        Method::Agent,
        Method::Migrate,
        Method::SeedScript,
        Method::Keepalived,
    ];

    /// A short name (`agent`, `migrate`, `seed-script`, `keepalived`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Agent => "agent",
            Method::Migrate => "migrate",
            Method::SeedScript => "seed-script",
            Method::Keepalived => "keepalived",
        }
    }

    /// Parses [`Method::name`].
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }

    /// How the HAVIP's drift range starts for this method: empty for ours (they must add themselves), all
    /// hosts for the seed's methods (which never call the API).
    pub fn drift_range(self) -> DriftRange {
        match self {
            Method::Agent | Method::Migrate => DriftRange::Empty,
            Method::SeedScript | Method::Keepalived => DriftRange::AllHosts,
        }
    }

    /// Whether this method makes cloud API calls.
    pub fn uses_api(self) -> bool {
        matches!(self, Method::Agent | Method::Migrate)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the agent's binaries are.
#[derive(Debug, Clone, Default)]
pub struct Binaries {
    /// `havip-agent` (needed by [`Method::Agent`]).
    pub agent: Option<PathBuf>,
    /// `migrate-havip` (needed by [`Method::Migrate`]).
    pub migrate: Option<PathBuf>,
}

impl Binaries {
    /// Looks next to the running executable (`target/<profile>/deps/..`) for both binaries, as a fallback
    /// when `CARGO_BIN_EXE_*` is not available.
    pub fn from_target_dir() -> Binaries {
        Binaries {
            agent: havip_testkit::testbed::product_bin("havip-agent").ok(),
            migrate: havip_testkit::testbed::product_bin("migrate-havip").ok(),
        }
    }

    fn agent(&self) -> Result<&Path> {
        let p = self.agent.as_deref().ok_or_else(|| {
            anyhow!("the havip-agent binary was not given (build it: cargo build)")
        })?;
        ensure_file(p)
    }

    fn migrate(&self) -> Result<&Path> {
        let p = self.migrate.as_deref().ok_or_else(|| {
            anyhow!("the migrate-havip binary was not given (build it: cargo build)")
        })?;
        ensure_file(p)
    }
}

fn ensure_file(p: &Path) -> Result<&Path> {
    if !p.is_file() {
        bail!("{} does not exist (build it: cargo build)", p.display());
    }
    Ok(p)
}

/// Fails with a message naming the missing tool when one the method needs is not installed.
pub fn require_tools(method: Method) -> Result<()> {
    let mut tools = vec!["ip", "redis-server", "redis-sentinel", "redis-cli", "nft"];
    match method {
        // The seed's script announces with `arping` (either flavour: it asks which one it has).
        Method::SeedScript => tools.push("arping"),
        Method::Keepalived => tools.push("keepalived"),
        Method::Agent | Method::Migrate => {}
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        bail!(
            "the lab needs {} (Debian: apt-get install iproute2 redis-server redis-sentinel redis-tools \
             nftables, and arping for the seed's script, keepalived for keepalived)",
            missing.join(", ")
        );
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// What Sentinel must be configured with for a method, before the Redis lab starts.
#[derive(Debug, Clone, Default)]
pub struct SentinelSetup {
    /// `client-reconfig-script` for every Sentinel (`None`: set per host later, or none).
    pub reconfig_script: Option<PathBuf>,
    /// Environment per Sentinel (node order).
    pub env: Vec<Vec<(String, String)>>,
    /// Extra `sentinel.conf` lines.
    pub conf: Vec<String>,
    /// Per-host scripts to set with `SENTINEL SET ... client-reconfig-script` once the lab runs.
    pub per_host_script: Vec<PathBuf>,
}

/// What the VIP managers of a run look after: which HAVIPs (one per Sentinel master) and on which hosts
/// the long-running managers run. Every host gets the config files either way (Sentinel runs the script
/// methods on every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The HAVIPs, one `[[havip]]` each in the agent config.
    pub havips: Vec<HavipEntry>,
    /// The hosts (node indices) that run a long-running manager (agent, keepalived).
    pub hosts: Vec<usize>,
    /// The local Redis port for the agent's `[redis]` section; `None`: the port Sentinel reports for each
    /// master (several masters on one host).
    pub redis_port: Option<u16>,
}

impl Fleet {
    /// The lab's: the one HAVIP, a manager on every Redis host, Redis on [`REDIS_PORT`].
    pub fn lab() -> Fleet {
        Fleet {
            havips: vec![HavipEntry::lab()],
            hosts: (0..HOST_IPS.len()).collect(),
            redis_port: Some(REDIS_PORT),
        }
    }
}

/// The agent config for host `i` (also `migrate-havip`'s, via `HAVIP_AGENT_CONFIG`).
pub fn agent_config(endpoint: &str, i: usize, lock_dir: &Path) -> String {
    agent_config_for(endpoint, i, lock_dir, &Fleet::lab())
}

/// The agent config for host `i` looking after `fleet`'s HAVIPs.
pub fn agent_config_for(endpoint: &str, i: usize, lock_dir: &Path, fleet: &Fleet) -> String {
    let sentinels: Vec<String> = HOST_IPS
        .iter()
        .map(|ip| format!("\"{ip}:{SENTINEL_PORT}\""))
        .collect();
    let redis = match fleet.redis_port {
        Some(port) => format!("address = \"{}:{port}\"\n", HOST_IPS[i]),
        // The agent then pauses the master Sentinel names on this host, at the port it reports.
        None => String::new(),
    };
    let havips: String = fleet
        .havips
        .iter()
        .map(|h| {
            format!(
                "[[havip]]\nmaster = \"{}\"\nhavip_id = \"{}\"\nvip = \"{}\"\n\n",
                h.master,
                h.havip_id,
                h.vip_cidr()
            )
        })
        .collect();
    format!(
        r#"# havip-agent lab config for host {i} (written by the lab; credentials come from the environment)
[cloud]
region = "ap-guangzhou"
endpoint = "{endpoint}"
# Not used: the instance id and address below are explicit.
metadata_endpoint = "{endpoint}/latest/meta-data/"

[node]
instance_id = "{instance}"
address = "{ip}"
interface = "eth0"

[sentinel]
addresses = [{sentinels}]

[redis]
{redis}
{havips}[claim]
lock_dir = "{lock}"

[metrics]
"#,
        instance = super::topology::INSTANCE_IDS[i],
        ip = HOST_IPS[i],
        sentinels = sentinels.join(", "),
        lock = lock_dir.display(),
    )
}

/// The seed script rendered for host `i`.
pub fn seed_script(i: usize) -> String {
    SEED_SCRIPT
        .replace("@LOCAL_IP@", &HOST_IPS[i].to_string())
        .replace("@VIP@", &VIP.to_string())
        .replace("@NETMASK@", &PREFIX.to_string())
        .replace("@INTERFACE@", Lab::HOST_IF)
}

/// The seed's keepalived config rendered for host `i`.
pub fn keepalived_conf(i: usize, check_script: &Path) -> String {
    let peers: Vec<String> = HOST_IPS
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, ip)| format!("        {ip}"))
        .collect();
    SEED_KEEPALIVED_CONF
        .replace("@ROUTER_ID@", &format!("redis{}", i + 1))
        .replace("@CHECK_SCRIPT@", &check_script.display().to_string())
        .replace("@INTERFACE@", Lab::HOST_IF)
        .replace("@PRIORITY@", &(100 - i).to_string())
        .replace("@LOCAL_IP@", &HOST_IPS[i].to_string())
        .replace("@PEERS@", &peers.join("\n"))
        .replace("@VIP@", &VIP.to_string())
        .replace("@NETMASK@", &PREFIX.to_string())
}

/// The seed's vrrp_script check rendered for host `i`.
pub fn check_script(i: usize) -> String {
    SEED_CHECK_SCRIPT
        .replace("@LOCAL_IP@", &HOST_IPS[i].to_string())
        .replace("@REDIS_PORT@", &REDIS_PORT.to_string())
}

fn write_file(path: &Path, text: &str, exec: bool) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    let mode = if exec { 0o755 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

struct Running {
    child: Child,
    /// keepalived's VRRP child writes its pid here; it must be killed too.
    extra_pid_file: Option<PathBuf>,
}

/// The VIP managers of one lab run: their files and processes.
pub struct Managers {
    method: Method,
    dir: PathBuf,
    bins: Binaries,
    endpoint: String,
    netns: Vec<String>,
    fleet: Fleet,
    procs: Vec<Option<Running>>,
    starts: Vec<u32>,
}

impl fmt::Debug for Managers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managers")
            .field("method", &self.method)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Managers {
    /// Writes every host's files under `dir` and returns what Sentinel needs. Nothing runs yet.
    pub fn prepare(
        method: Method,
        topo: &Topology,
        dir: &Path,
        bins: Binaries,
    ) -> Result<(Managers, SentinelSetup)> {
        Managers::prepare_fleet(method, topo, dir, bins, Fleet::lab())
    }

    /// As [`Managers::prepare`], for `fleet`'s HAVIPs and hosts. Only the agent and `migrate-havip` look
    /// after more than one HAVIP (the seed's methods are rendered for the lab's one VIP).
    pub fn prepare_fleet(
        method: Method,
        topo: &Topology,
        dir: &Path,
        bins: Binaries,
        fleet: Fleet,
    ) -> Result<(Managers, SentinelSetup)> {
        if !method.uses_api() && fleet != Fleet::lab() {
            bail!("{method} is set up for the lab's one HAVIP only");
        }
        if let Some(h) = fleet.hosts.iter().find(|h| **h >= HOST_IPS.len()) {
            bail!(
                "fleet host {h} is not a Redis host of the lab (0..{})",
                HOST_IPS.len()
            );
        }
        let endpoint = topo.endpoint();
        let mut setup = SentinelSetup::default();
        for i in 0..HOST_IPS.len() {
            let host_dir = dir.join(format!("host{}", i + 1));
            std::fs::create_dir_all(host_dir.join("lock"))
                .with_context(|| format!("creating {}", host_dir.display()))?;
            match method {
                Method::Agent | Method::Migrate => {
                    let cfg = host_dir.join("havip-agent.toml");
                    write_file(
                        &cfg,
                        &agent_config_for(&endpoint, i, &host_dir.join("lock"), &fleet),
                        false,
                    )?;
                    havip_agent::config::Config::load(&cfg).map_err(|e| {
                        anyhow!("the lab's agent config {} is invalid: {e}", cfg.display())
                    })?;
                    setup.env.push(agent_env(&cfg));
                }
                Method::SeedScript => {
                    let script = host_dir.join("notify_mymaster.sh");
                    write_file(&script, &seed_script(i), true)?;
                    setup.per_host_script.push(script);
                }
                Method::Keepalived => {
                    let check = host_dir.join("check_redis_master.sh");
                    write_file(&check, &check_script(i), true)?;
                    write_file(
                        &host_dir.join("keepalived.conf"),
                        &keepalived_conf(i, &check),
                        false,
                    )?;
                }
            }
        }
        match method {
            Method::Migrate => {
                let migrate = bins.migrate()?.to_owned();
                // The same binary as notification-script is migrate mode's fence (see deploy/sentinel.conf.snippet).
                for h in &fleet.havips {
                    setup.conf.push(format!(
                        "sentinel notification-script {} {}",
                        h.master,
                        migrate.display()
                    ));
                }
                setup.reconfig_script = Some(migrate);
            }
            Method::Agent => {
                bins.agent()?;
            }
            // Each host needs its own copy (its LOCAL_IP), so the script is set per Sentinel at run time,
            // which Redis 7 allows only with this.
            Method::SeedScript => setup.conf.push("sentinel deny-scripts-reconfig no".into()),
            Method::Keepalived => {}
        }
        let netns = (0..HOST_IPS.len())
            .map(|i| topo.host(i).ns.name().to_owned())
            .collect();
        Ok((
            Managers {
                method,
                dir: dir.to_owned(),
                bins,
                endpoint,
                netns,
                fleet,
                procs: (0..HOST_IPS.len()).map(|_| None).collect(),
                starts: vec![0; HOST_IPS.len()],
            },
            setup,
        ))
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The cloud endpoint the hosts use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn host_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("host{}", i + 1))
    }

    /// Starts the long-running managers (agents, keepalived) on every host, and for the script methods
    /// makes the initial claim on `master` as an operator would (the script only runs on a failover).
    pub async fn start(&mut self, master: usize) -> Result<()> {
        match self.method {
            Method::Agent | Method::Keepalived => {
                for i in self.fleet.hosts.clone() {
                    self.spawn(i)?;
                }
            }
            Method::Migrate => {
                let cfg = self.host_dir(master).join("havip-agent.toml");
                for h in &self.fleet.havips {
                    let mut cmd = self.in_ns(master, self.bins.migrate()?);
                    cmd.args(["--master", &h.master, "--to", &HOST_IPS[master].to_string()]);
                    cmd.envs(agent_env(&cfg));
                    let log = match self.fleet.havips.len() {
                        1 => self.host_dir(master).join("initial-claim.log"),
                        _ => self
                            .host_dir(master)
                            .join(format!("initial-claim-{}.log", h.master)),
                    };
                    run_to_end(cmd, &log).await?;
                }
            }
            Method::SeedScript => {
                let script = self.host_dir(master).join("notify_mymaster.sh");
                let mut cmd = self.in_ns(master, &script);
                let ip = HOST_IPS[master].to_string();
                let port = REDIS_PORT.to_string();
                cmd.args([MASTER_NAME, "leader", "start", &ip, &port, &ip, &port]);
                run_to_end(cmd, &self.host_dir(master).join("initial-claim.log")).await?;
            }
        }
        Ok(())
    }

    fn in_ns(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns[i]]).arg(program);
        c
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        self.starts[i] += 1;
        let host_dir = self.host_dir(i);
        let log = host_dir.join(format!("{}-{}.log", self.method, self.starts[i]));
        let (mut cmd, extra_pid_file) = match self.method {
            Method::Agent => {
                let cfg = host_dir.join("havip-agent.toml");
                let mut cmd = self.in_ns(i, self.bins.agent()?);
                cmd.arg("run").arg("--config").arg(&cfg);
                cmd.envs(agent_env(&cfg));
                (cmd, None)
            }
            Method::Keepalived => {
                let vrrp_pid = host_dir.join("vrrp.pid");
                let mut cmd = self.in_ns(i, Path::new("keepalived"));
                cmd.args([
                    "--dont-fork",
                    "--log-console",
                    "--log-detail",
                    "--no-syslog",
                ])
                .args(["--vrrp", "--dont-respawn"])
                .arg("--use-file")
                .arg(host_dir.join("keepalived.conf"))
                .arg("--pid")
                .arg(host_dir.join("keepalived.pid"))
                .arg("--vrrp_pid")
                .arg(&vrrp_pid);
                (cmd, Some(vrrp_pid))
            }
            Method::Migrate | Method::SeedScript => {
                bail!("{} has no long-running process", self.method)
            }
        };
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        havip_testkit::testbed::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} on host {}", self.method, i + 1))?;
        self.procs[i] = Some(Running {
            child,
            extra_pid_file,
        });
        Ok(())
    }

    /// SIGKILLs the manager process(es) on host `i`. Returns whether something was running.
    pub fn kill(&mut self, i: usize) -> bool {
        let Some(mut r) = self.procs[i].take() else {
            return false;
        };
        if let Some(pid_file) = &r.extra_pid_file
            && let Ok(text) = std::fs::read_to_string(pid_file)
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            // SAFETY: kill(2) on the VRRP child of a keepalived we started (its pid file is in our dir).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = r.child.kill();
        let _ = r.child.wait();
        if let Some(pid_file) = &r.extra_pid_file {
            // The killed VRRP child may linger as a zombie until init reaps it, and a new keepalived refuses
            // to start ("daemon is already running") while its pid files name a live pid: remove them.
            let _ = std::fs::remove_file(pid_file);
            let _ = std::fs::remove_file(self.host_dir(i).join("keepalived.pid"));
        }
        true
    }

    /// Starts the manager on host `i` again (after [`Managers::kill`]).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// The pid of the manager process started on host `i` (keepalived: its main process, the parent of
    /// its VRRP child), while one was started and not killed; `None` for the script methods.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|r| r.child.id())
    }

    /// Whether the manager process on host `i` is running (script methods: always false).
    pub fn running(&mut self, i: usize) -> bool {
        match self.procs[i].as_mut() {
            Some(r) => matches!(r.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The logs of every manager process (and initial claims), for a report or a failing test.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..HOST_IPS.len() {
            let Ok(dir) = std::fs::read_dir(self.host_dir(i)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                out.push_str(&format!("--- {} ---\n{text}\n", f.display()));
            }
        }
        out
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// The environment of the agent and `migrate-havip` on a host: its config and the lab's (fake) key.
pub(crate) fn agent_env(cfg: &Path) -> Vec<(String, String)> {
    vec![
        ("HAVIP_AGENT_CONFIG".into(), cfg.display().to_string()),
        ("TENCENTCLOUD_SECRET_ID".into(), SECRET_ID.into()),
        ("TENCENTCLOUD_SECRET_KEY".into(), SECRET_KEY.into()),
        (
            "HAVIP_LOG".into(),
            std::env::var("LAB_AGENT_LOG").unwrap_or_else(|_| "info,havip_agent=debug".into()),
        ),
    ]
}

async fn run_to_end(mut cmd: Command, log: &Path) -> Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut cmd = tokio::process::Command::from(cmd);
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.status())
        .await
        .map_err(|_| {
            anyhow!(
                "the initial claim did not finish in 60 s (log: {})",
                log.display()
            )
        })?
        .context("running the initial claim")?;
    if !status.success() {
        bail!(
            "the initial claim failed ({status}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(())
}
