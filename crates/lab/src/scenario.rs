//! The lab's scenarios and the run of one (method, scenario) pair, start to finish.
//!
//! Owns the timeline of a run: build the topology (with the run's cloud move delay), start Redis + Sentinel
//! on the three hosts, the observers and the VIP managers, wait for the initial state (VIP on node 0, the
//! cloud agreeing, the client's data path pointing there), start the client, apply the fault, heal it, wait
//! for Sentinel to settle, then stop the client and collect the records for `lab::report`. Every step has a
//! deadline; everything is removed when the run ends, also on error or panic (drop guards, in reverse order
//! of creation). It does not compute the figures.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::client::{Client, ClientSpec};
use super::method::{Binaries, Managers, Method, SentinelSetup, require_tools};
use super::observe::{SentinelEvents, VipMonitor};
use super::report::{Records, RunReport, promoted_target};
use super::topology::{
    HAVIP_ID, HOST_IPS, INSTANCE_IDS, MASTER_NAME, REDIS_PORT, SENTINEL_PORT, Topology, VIP,
    vip_cidr,
};
use havip_testkit::fake::{Fault, FaultKind};
use havip_testkit::testbed::netns::Lab;
use havip_testkit::testbed::redis::{LabSpec, RedisLab, last_lines};

/// A fault the lab applies to the master's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// 1: the master host's link goes down (its bridge port), then comes back.
    LinkLoss,
    /// 2: the master's redis-server is SIGKILLed (the host and its Sentinel stay up); restarted at the heal.
    KillMaster,
    /// 3: the master host still reaches the client but not the other Redis hosts (a bridge filter that also
    /// drops broadcasts between them), then the filter is removed.
    PartialPartition,
    /// 4: as 2, and the new master's VIP manager is SIGKILLed right at the leader's `+promoted-slave`, then
    /// restarted.
    ManagerRestart,
    /// 5: as 2, while every cloud API call fails (HTTP 503 and `RequestLimitExceeded`, alternating) for a few
    /// seconds from the fault on.
    CloudFaults,
}

impl Scenario {
    /// Every scenario, in order.
    pub const ALL: [Scenario; 5] = [
        Scenario::LinkLoss,
        Scenario::KillMaster,
        Scenario::PartialPartition,
        Scenario::ManagerRestart,
        Scenario::CloudFaults,
    ];

    /// The scenario's number (1..=5).
    pub fn number(self) -> u8 {
        match self {
            Scenario::LinkLoss => 1,
            Scenario::KillMaster => 2,
            Scenario::PartialPartition => 3,
            Scenario::ManagerRestart => 4,
            Scenario::CloudFaults => 5,
        }
    }

    /// The scenario with that number.
    pub fn from_number(n: u8) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.number() == n)
    }

    /// What it does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::LinkLoss => "master host loses its link, then heals",
            Scenario::KillMaster => "master redis-server killed (SIGKILL), restarted later",
            Scenario::PartialPartition => {
                "master host reaches the client but not the other Redis hosts, then heals"
            }
            Scenario::ManagerRestart => {
                "master killed; the new master's VIP manager killed at +promoted-slave and restarted"
            }
            Scenario::CloudFaults => "master killed while the cloud API answers 503 / throttles",
        }
    }

    /// Whether the scenario means something for `method` (4 needs a long-running manager to kill).
    pub fn applies_to(self, method: Method) -> bool {
        self != Scenario::ManagerRestart || matches!(method, Method::Agent | Method::Keepalived)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.describe())
    }
}

/// Timings of a run. [`RunOptions::default`] is the baseline lab's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Client writes before the fault.
    pub warmup: Duration,
    /// How long the fault is held (link down, partition) or until the killed Redis is restarted.
    pub hold: Duration,
    /// How long the client keeps writing after the heal (the post-heal outage and the VIP's settling are
    /// measured in it).
    pub after_heal: Duration,
    /// Scenario 4: how long the new master's manager stays dead.
    pub manager_down: Duration,
    /// Scenario 5: how long the cloud API fails.
    pub api_fault_for: Duration,
    /// Where the binaries are.
    pub binaries: Binaries,
    /// Keep the run's directory (configs, logs) instead of deleting it; its path is in the notes.
    pub keep_dir: bool,
    /// How long the fake cloud takes to move the HAVIP after an accepted GARP (the platform's move time;
    /// zero: at once).
    pub move_delay: Duration,
    /// Sentinel's hello period shortened (`SENTINEL DEBUG`, [`QUICK_SETTLE`]), so that it converts a
    /// restarted old master to a replica after 2 s instead of 8: for the tests. The benchmark keeps
    /// Sentinel's defaults.
    pub quick_settle: bool,
}

/// What `quick_settle` sets with `SENTINEL DEBUG` (Redis 7.0+): hellos every 500 ms instead of 2 s (Sentinel
/// converts a returning old master to a replica after four hello periods). Failure detection is unchanged.
/// Not `info-period`: Sentinel also flags a master `+sdown` once it has reported the replica role for longer
/// than `down-after + 2 * info-period`, and with a 1 s info period a master promoted a moment ago still
/// counts as such, so Sentinel failed over a second time in about one run in three (the lab's double
/// failovers); with the default 10 s, none in eight runs.
pub const QUICK_SETTLE: [&str; 2] = ["publish-period", "500"];

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            hold: Duration::from_secs(10),
            after_heal: Duration::from_secs(10),
            manager_down: Duration::from_millis(500),
            api_fault_for: Duration::from_secs(6),
            binaries: Binaries::default(),
            keep_dir: std::env::var_os("LAB_KEEP").is_some(),
            move_delay: Duration::ZERO,
            quick_settle: false,
        }
    }
}

/// The outcome of one run: the figures, the raw records, and the logs for digging in.
#[derive(Debug)]
pub struct RunOutcome {
    /// The figures.
    pub report: RunReport,
    /// The raw records.
    pub records: Records,
    /// The VIP managers' logs.
    pub manager_logs: String,
    /// The tails of the Redis and Sentinel logs.
    pub redis_logs: String,
    /// The run's directory, when kept.
    pub dir: Option<PathBuf>,
}

impl RunOutcome {
    /// Everything needed to understand a failed run: the figures, notes, the timeline, and the tails of the
    /// managers' and Redis' logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "{}\n{}\nnotes: {:#?}\n--- timeline (ms from the fault) ---\n{}\n--- managers (last 150 lines) ---\n{}\n--- redis and sentinel ---\n{}",
            RunReport::header(),
            self.report.row(),
            self.report.notes,
            super::report::timeline_text(&self.records),
            last_lines(&self.manager_logs, 150),
            self.redis_logs
        )
    }
}

fn since(t: Instant) -> String {
    format!("{:.3}s", t.elapsed().as_secs_f64())
}

pub(crate) async fn wait_for<F: FnMut() -> Result<bool>>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts Redis (host 1 the master) and Sentinel on the lab's three hosts as every single-master lab run
/// does (quorum 2, `down-after` 1 s), told what the VIP manager under test needs (`setup`).
pub async fn start_redis(topo: &Topology, setup: &SentinelSetup) -> Result<RedisLab> {
    let spec = LabSpec {
        hosts: Some(topo.redis_hosts()),
        redis_port: Some(REDIS_PORT),
        sentinel_port: Some(SENTINEL_PORT),
        master_name: MASTER_NAME.into(),
        quorum: Some(2),
        down_after: Duration::from_millis(1000),
        // Clients reach Redis through the VIP too, which comes and goes: listen on every address.
        redis_conf: vec!["bind 0.0.0.0".into()],
        sentinel_conf: setup.conf.clone(),
        reconfig_script: setup.reconfig_script.clone(),
        sentinel_env: setup.env.clone(),
        ..LabSpec::default()
    };
    RedisLab::start(spec)
        .await
        .context("starting redis + sentinel on the lab hosts")
}

/// Which hosts have the VIP bound right now (read with `ip addr`, independent of the monitor).
pub fn vip_holders(topo: &Topology) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for i in 0..HOST_IPS.len() {
        if topo
            .host(i)
            .ns
            .ipv4_addrs(Lab::HOST_IF)?
            .contains(&vip_cidr())
        {
            out.push(i);
        }
    }
    Ok(out)
}

const PARTITION_TABLE: &str = "hvlab";

/// Runs one scenario with one method and returns what it measured. Must run on a thread that lives for the
/// whole run (processes are tied to it): call it from `#[tokio::test]` or a `block_on` on the main thread,
/// not from `spawn_blocking`.
pub async fn run(method: Method, scenario: Scenario, opts: &RunOptions) -> Result<RunOutcome> {
    require_tools(method)?;
    let started = Instant::now();
    let mut notes = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix(&format!("havip-lab-{}-s{}-", method, scenario.number()))
        .tempdir()
        .context("creating the run's temp dir")?;
    // Drop order (reverse of declaration): client, managers, observers, redis, topology, dir.
    let topo = Topology::build("lab", method.drift_range()).await?;
    topo.fake()
        .set_move_delay(opts.move_delay)
        .context("setting the fake cloud's move delay")?;
    let (mut managers, setup) =
        Managers::prepare(method, &topo, dir.path(), opts.binaries.clone())?;
    let redis = start_redis(&topo, &setup).await?;
    if opts.quick_settle {
        for i in 0..HOST_IPS.len() {
            let mut cmd = vec!["SENTINEL", "DEBUG"];
            cmd.extend(QUICK_SETTLE);
            redis
                .sentinel_command(i, &cmd)
                .await
                .with_context(|| format!("shortening sentinel {i}'s timers (SENTINEL DEBUG)"))?;
        }
        notes.push(format!("sentinel timers: {}", QUICK_SETTLE.join(" ")));
    }
    for (i, script) in setup.per_host_script.iter().enumerate() {
        redis
            .sentinel_command(
                i,
                &[
                    "SENTINEL",
                    "SET",
                    MASTER_NAME,
                    "client-reconfig-script",
                    &script.display().to_string(),
                ],
            )
            .await
            .with_context(|| format!("setting sentinel {i}'s client-reconfig-script"))?;
    }
    let host_ns: Vec<&havip_testkit::testbed::netns::Netns> =
        (0..HOST_IPS.len()).map(|i| &topo.host(i).ns).collect();
    let vip_monitor = VipMonitor::start(&host_ns, Lab::HOST_IF, &vip_cidr())?;
    let sentinels: Vec<SocketAddr> = HOST_IPS
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(*ip), SENTINEL_PORT))
        .collect();
    let events = SentinelEvents::start(topo.switch(), sentinels)?;

    // Initial state: the VIP on node 0 only, the cloud agreeing, and the client's traffic going there.
    let old_master = 0;
    managers.start(old_master).await?;
    let fake = topo.fake().clone();
    let initial = wait_for(
        "the VIP on host 1 only, the cloud holder ins-lab-1 and the client steered to host 1",
        Duration::from_secs(30) + opts.move_delay,
        || {
            let holders = vip_holders(&topo)?;
            let cloud = fake.havip(HAVIP_ID).and_then(|h| h.instance_id);
            Ok(holders == vec![old_master]
                && cloud.as_deref() == Some(INSTANCE_IDS[old_master])
                && topo.data_path().current() == Some(old_master))
        },
    )
    .await;
    if let Err(e) = initial {
        bail!(
            "{e:#}: holders {:?}, cloud {:?}\n{}",
            vip_holders(&topo).unwrap_or_default(),
            fake.havip(HAVIP_ID),
            managers.logs()
        );
    }
    notes.push(format!("initial state after {}", since(started)));

    // The client, writing through the VIP.
    let key = format!("lab:{}:{}", method, scenario.number());
    redis.redis_command(old_master, &["DEL", &key]).await?;
    let max_run = opts.warmup + opts.hold + opts.after_heal + Duration::from_secs(90);
    let client = Client::start(
        &topo.client().ns,
        ClientSpec::baseline(SocketAddr::new(IpAddr::V4(VIP), REDIS_PORT), &key, max_run),
    )?;
    tokio::time::sleep(opts.warmup).await;

    // The fault.
    let m = old_master;
    let fault_at = SystemTime::now();
    match scenario {
        Scenario::LinkLoss => topo.switch().link_set(&topo.port_of(m), false)?,
        Scenario::KillMaster | Scenario::ManagerRestart => redis.kill_redis(m),
        Scenario::PartialPartition => partition(&topo, m)?,
        Scenario::CloudFaults => {
            // Alternate 503s and throttling, one each, for as many requests as any client could make.
            for _ in 0..500 {
                fake.inject(Fault::always(FaultKind::Http(503)).times(1));
                fake.inject(Fault::always(FaultKind::Throttle).times(1));
            }
            redis.kill_redis(m);
        }
    }
    let fault_done_at = SystemTime::now();
    let fault_instant = Instant::now();

    if scenario == Scenario::ManagerRestart {
        // Kill the new master's manager at the leader's +promoted-slave, restart it a little later.
        let deadline = Instant::now() + opts.hold;
        let mut victim = None;
        while victim.is_none() && Instant::now() < deadline {
            victim = events
                .events()
                .iter()
                .filter(|e| e.at >= fault_at && e.channel == "+promoted-slave")
                .find_map(|e| promoted_target(&e.payload));
            if victim.is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        match victim {
            Some(v) => {
                let was_running = managers.kill(v);
                notes.push(format!(
                    "killed host {}'s {method} at +promoted-slave ({} after the fault, was running: {was_running})",
                    v + 1,
                    since(fault_instant)
                ));
                tokio::time::sleep(opts.manager_down).await;
                managers.restart(v)?;
                notes.push(format!(
                    "restarted it {} after the fault",
                    since(fault_instant)
                ));
            }
            None => notes.push("no +promoted-slave seen: nothing killed".into()),
        }
    }
    if scenario == Scenario::CloudFaults {
        tokio::time::sleep(opts.api_fault_for.saturating_sub(fault_instant.elapsed())).await;
        fake.clear_faults();
        notes.push(format!(
            "cloud faults cleared {} after the fault",
            since(fault_instant)
        ));
    }

    // The heal.
    tokio::time::sleep(opts.hold.saturating_sub(fault_instant.elapsed())).await;
    match scenario {
        Scenario::LinkLoss => topo.switch().link_set(&topo.port_of(m), true)?,
        Scenario::PartialPartition => heal_partition(&topo)?,
        Scenario::KillMaster | Scenario::ManagerRestart | Scenario::CloudFaults => {
            redis.restart_redis(m).await?
        }
    }
    let heal_at = SystemTime::now();
    let heal_instant = Instant::now();
    let settled = match redis.wait_ready(Duration::from_secs(30)).await {
        Ok(()) => true,
        Err(e) => {
            notes.push(format!("sentinel did not settle after the heal: {e:#}"));
            false
        }
    };
    tokio::time::sleep(opts.after_heal.saturating_sub(heal_instant.elapsed())).await;

    // Stop and collect.
    let records = collect(
        client,
        &redis,
        &topo,
        &events,
        &vip_monitor,
        &key,
        Timeline {
            method,
            scenario,
            fault_at,
            fault_done_at,
            heal_at,
            old_master,
            settled,
            move_delay: opts.move_delay,
            notes,
        },
    )
    .await?;
    let report = RunReport::from_records(&records);
    let manager_logs = managers.logs();
    let redis_logs = redis.logs_tail(40);
    drop(events);
    drop(vip_monitor);
    drop(managers);
    drop(redis);
    drop(topo);
    let kept = if opts.keep_dir {
        Some(dir.keep())
    } else {
        drop(dir);
        None
    };
    let mut report = report;
    if let Some(d) = &kept {
        report.notes.push(format!("run dir kept: {}", d.display()));
    }
    Ok(RunOutcome {
        report,
        records,
        manager_logs,
        redis_logs,
        dir: kept,
    })
}

/// What a run fixed before the end, for [`collect`].
pub(crate) struct Timeline {
    pub method: Method,
    pub scenario: Scenario,
    pub fault_at: SystemTime,
    pub fault_done_at: SystemTime,
    pub heal_at: SystemTime,
    pub old_master: usize,
    pub settled: bool,
    pub move_delay: Duration,
    pub notes: Vec<String>,
}

/// Ends a run: stops the client, asks the Sentinels for the final master (a note when they disagree), reads
/// the list it holds, and gathers everything the lab observed into the run's [`Records`]. Shared by the
/// scenarios and the fault matrix (`faults`).
pub(crate) async fn collect(
    client: Client,
    redis: &RedisLab,
    topo: &Topology,
    events: &SentinelEvents,
    vip_monitor: &VipMonitor,
    key: &str,
    t: Timeline,
) -> Result<Records> {
    let mut notes = t.notes;
    let end_at = SystemTime::now();
    let attempts = client.stop()?;
    let final_master = match redis.wait_master(|_| true, Duration::from_secs(10)).await {
        Ok(addr) => redis.node_of(addr),
        Err(e) => {
            notes.push(format!(
                "sentinels do not agree on a master at the end: {e:#}"
            ));
            None
        }
    };
    let final_list = match final_master {
        Some(f) => read_list(redis, f, key).await?,
        None => Vec::new(),
    };
    let fake = topo.fake();
    Ok(Records {
        method: t.method,
        scenario: t.scenario,
        fault_at: t.fault_at,
        fault_done_at: t.fault_done_at,
        heal_at: t.heal_at,
        end_at,
        old_master: t.old_master,
        final_master,
        settled: t.settled,
        attempts,
        final_list,
        events: events.events(),
        garps: topo.garp().seen(),
        moves: fake.moves(),
        move_delay: t.move_delay,
        steers: topo.data_path().steers(),
        requests: fake.requests(),
        cloud_holder: fake.havip(HAVIP_ID).and_then(|h| h.instance_id),
        vip_changes: vip_monitor.changes(),
        macs: (0..HOST_IPS.len()).map(|i| topo.host(i).mac).collect(),
        notes,
    })
}

/// Cuts the master's port off from the other Redis hosts' ports (both directions, broadcasts too) with an
/// nftables `bridge` filter in the switch namespace. The client's port and the switch itself stay reachable.
fn partition(topo: &Topology, master: usize) -> Result<()> {
    let me = topo.port_of(master);
    let others: Vec<String> = (0..HOST_IPS.len())
        .filter(|i| *i != master)
        .map(|i| format!("\"{}\"", topo.port_of(i)))
        .collect();
    let others = others.join(", ");
    let rules = format!(
        "table bridge {PARTITION_TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
         iifname \"{me}\" oifname {{ {others} }} drop\n    iifname {{ {others} }} oifname \"{me}\" drop\n  }}\n}}\n"
    );
    run_nft(topo, &["-f", "-"], Some(&rules))
}

fn heal_partition(topo: &Topology) -> Result<()> {
    run_nft(topo, &["delete", "table", "bridge", PARTITION_TABLE], None)
}

fn run_nft(topo: &Topology, args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut cmd = topo.switch().command("nft");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running nft (apt-get install nftables)")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .context("writing nft rules")?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) async fn read_list(redis: &RedisLab, node: usize, key: &str) -> Result<Vec<u64>> {
    let v = redis
        .redis_command(node, &["LRANGE", key, "0", "-1"])
        .await
        .with_context(|| format!("reading {key} on the final master"))?;
    let redis::Value::Array(items) = v else {
        return Err(anyhow!("LRANGE answered {v:?}"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let redis::Value::BulkString(b) = item else {
            return Err(anyhow!("LRANGE item {item:?} is not a string"));
        };
        let s = String::from_utf8_lossy(&b);
        out.push(
            s.parse()
                .with_context(|| format!("list item {s:?} is not a sequence number"))?,
        );
    }
    Ok(out)
}
