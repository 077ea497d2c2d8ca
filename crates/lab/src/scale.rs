//! The scale run of issue 13: N Redis masters (default 20) on one host, their replicas on another, ONE set
//! of three Sentinels (one per lab host, quorum 2) monitoring all of them, one HAVIP per master, and the
//! master host's link cut. Measures, per HAVIP, how long after its master's first `+switch-master` the new
//! host's first GARP and the cloud's confirmation came, and what the API saw (calls per action,
//! `RequestLimitExceeded`), for the agent and for `migrate-havip` as Sentinel's script.
//!
//! Owns the scale run's Redis + Sentinel processes ([`ScaleRedis`]: the lab's `RedisLab` runs one master per
//! Sentinel set), its timeline and its figures ([`ScaleReport`]). It reuses the lab's topology (namespaces,
//! fake cloud, GARP watcher), VIP managers ([`Managers::prepare_fleet`]) and Sentinel event subscriptions.
//! Everything is removed when the run ends, also on error (drop guards).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::method::{Binaries, Fleet, Managers, Method, SentinelSetup, require_tools};
use super::observe::{SentinelEvent, SentinelEvents};
use super::scenario::{QUICK_SETTLE, wait_for};
use super::topology::{DriftRange, HOST_IPS, HavipEntry, INSTANCE_IDS, SENTINEL_PORT, Topology};
use havip_testkit::fake::{FakeCloud, HavipSpec, RecordedRequest};
use havip_testkit::testbed::netns::{Lab, Netns};
use havip_testkit::testbed::redis::last_lines;

/// The host all masters start on (node index).
pub const MASTER_HOST: usize = 0;
/// The host all replicas run on, and where every HAVIP must end.
pub const REPLICA_HOST: usize = 1;
/// The number of masters.
pub const DEFAULT_MASTERS: usize = 20;
/// At most this many masters (VIPs `198.18.0.101`..`198.18.0.199`).
pub const MAX_MASTERS: usize = 99;
/// Master `k` (0-based) listens on this port + `k`, on the master host and the replica host alike.
pub const PORT_BASE: u16 = 6400;
/// Master `k`'s VIP is `198.18.0.<VIP_BASE + k>`.
pub const VIP_BASE: u8 = 101;
/// The target: every HAVIP confirmed within this long of its master's `+switch-master`.
pub const CONFIRM_BUDGET: Duration = Duration::from_secs(2);

/// One master of the scale run and its HAVIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleMaster {
    /// Master name, HAVIP id and VIP.
    pub havip: HavipEntry,
    /// Its Redis port (on both hosts).
    pub port: u16,
}

/// The `n` masters of a scale run: `m01`.., `havip-s0000001`.., `198.18.0.101`.., ports 6400...
pub fn masters(n: usize) -> Result<Vec<ScaleMaster>> {
    if n == 0 || n > MAX_MASTERS {
        bail!("a scale run needs 1..={MAX_MASTERS} masters, not {n}");
    }
    Ok((0..n)
        .map(|k| ScaleMaster {
            havip: HavipEntry {
                master: format!("m{:02}", k + 1),
                havip_id: format!("havip-s{:07}", k + 1),
                vip: Ipv4Addr::new(198, 18, 0, VIP_BASE + k as u8),
            },
            port: PORT_BASE + k as u16,
        })
        .collect())
}

/// How to run one scale run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// The VIP manager: [`Method::Agent`] or [`Method::Migrate`].
    pub method: Method,
    /// Number of masters (and HAVIPs).
    pub masters: usize,
    /// Where the binaries are.
    pub binaries: Binaries,
    /// The fake cloud's per-action limit (requests per second); `None`: unlimited.
    pub rate_limit: Option<u32>,
    /// How long to wait after the cut for every HAVIP to move and be confirmed.
    pub settle_timeout: Duration,
    /// Bring the link back at the end and wait for the old host to release every VIP.
    pub heal: bool,
    /// Shorten Sentinel's hello period ([`QUICK_SETTLE`]) so it settles sooner after the heal (tests).
    pub quick_settle: bool,
    /// Keep the run's directory (configs, logs).
    pub keep_dir: bool,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        Self {
            method: Method::Agent,
            masters: DEFAULT_MASTERS,
            binaries: Binaries::default(),
            rate_limit: Some(havip_testkit::fake::limits::DEFAULT_RATE_LIMIT),
            settle_timeout: Duration::from_secs(60),
            heal: false,
            quick_settle: false,
            keep_dir: std::env::var_os("LAB_KEEP").is_some(),
        }
    }
}

/// The scale run's Redis servers (masters on [`MASTER_HOST`], replicas on [`REPLICA_HOST`]) and three
/// Sentinels (one per lab host) monitoring every master. Killed on drop.
pub struct ScaleRedis {
    dir: PathBuf,
    procs: Vec<(String, Child)>,
}

impl std::fmt::Debug for ScaleRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleRedis")
            .field("dir", &self.dir)
            .field("procs", &self.procs.len())
            .finish()
    }
}

impl ScaleRedis {
    /// Writes the configs under `dir` and starts every process (Sentinels get `setup`'s script, extra
    /// lines and environment). Does not wait: see [`ScaleRedis::wait_ready`].
    pub fn start(
        topo: &Topology,
        dir: &Path,
        masters: &[ScaleMaster],
        setup: &SentinelSetup,
    ) -> Result<ScaleRedis> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut me = ScaleRedis {
            dir,
            procs: Vec::new(),
        };
        for host in [MASTER_HOST, REPLICA_HOST] {
            for m in masters {
                let name = format!("redis-{}-{}", host + 1, m.port);
                let conf = me.redis_conf(&name, host, m.port);
                me.spawn(topo.host(host).ns.name(), &name, "redis-server", &conf, &[])?;
            }
        }
        for host in 0..HOST_IPS.len() {
            let name = format!("sentinel-{}", host + 1);
            let conf = me.sentinel_conf(&name, host, masters, setup);
            let env = setup.env.get(host).cloned().unwrap_or_default();
            me.spawn(
                topo.host(host).ns.name(),
                &name,
                "redis-sentinel",
                &conf,
                &env,
            )?;
        }
        Ok(me)
    }

    fn redis_conf(&self, name: &str, host: usize, port: u16) -> String {
        let ip = HOST_IPS[host];
        let work = self.dir.join(name);
        let mut lines = vec![
            format!("port {port}"),
            // Clients may come through a VIP: listen on every address.
            "bind 0.0.0.0".into(),
            "protected-mode no".into(),
            "daemonize no".into(),
            format!("dir {}", work.display()),
            format!("logfile {}", self.dir.join(format!("{name}.log")).display()),
            "save \"\"".into(),
            "appendonly no".into(),
            // Without it the master sees its replica as the address it connected from.
            format!("replica-announce-ip {ip}"),
            "repl-diskless-sync yes".into(),
            "repl-diskless-sync-delay 0".into(),
        ];
        if host != MASTER_HOST {
            lines.push(format!("replicaof {} {port}", HOST_IPS[MASTER_HOST]));
        }
        lines.join("\n") + "\n"
    }

    fn sentinel_conf(
        &self,
        name: &str,
        host: usize,
        masters: &[ScaleMaster],
        setup: &SentinelSetup,
    ) -> String {
        let ip = HOST_IPS[host];
        let mut lines = vec![
            format!("port {SENTINEL_PORT}"),
            format!("bind {ip}"),
            "protected-mode no".into(),
            "daemonize no".into(),
            format!("dir {}", self.dir.join(name).display()),
            format!("logfile {}", self.dir.join(format!("{name}.log")).display()),
            // Without it the Sentinels see each other as 127.0.0.1 and never elect a leader.
            format!("sentinel announce-ip {ip}"),
            "sentinel resolve-hostnames no".into(),
        ];
        for m in masters {
            let n = &m.havip.master;
            lines.push(format!(
                "sentinel monitor {n} {} {} 2",
                HOST_IPS[MASTER_HOST], m.port
            ));
            lines.push(format!("sentinel down-after-milliseconds {n} 1000"));
            lines.push(format!("sentinel failover-timeout {n} 10000"));
            lines.push(format!("sentinel parallel-syncs {n} 1"));
            if let Some(script) = &setup.reconfig_script {
                lines.push(format!(
                    "sentinel client-reconfig-script {n} {}",
                    script.display()
                ));
            }
        }
        // After the monitors: these lines name the masters.
        lines.extend(setup.conf.iter().cloned());
        lines.join("\n") + "\n"
    }

    fn spawn(
        &mut self,
        netns: &str,
        name: &str,
        program: &str,
        conf: &str,
        env: &[(String, String)],
    ) -> Result<()> {
        std::fs::create_dir_all(self.dir.join(name))?;
        let conf_path = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let out = std::fs::File::create(self.dir.join(format!("{name}.out")))?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", netns, program])
            .arg(&conf_path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        havip_testkit::testbed::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| {
            format!("starting {program} (apt-get install redis-server redis-sentinel)")
        })?;
        self.procs.push((name.to_owned(), child));
        Ok(())
    }

    /// Waits until every Sentinel sees every master as up, with its replica and both other Sentinels.
    /// Fails early, with its output, when a process exits.
    pub async fn wait_ready(
        &mut self,
        switch: &Netns,
        masters: &[ScaleMaster],
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let missing = not_ready(switch, masters)?;
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sentinels not ready after {timeout:?}: {}",
                    missing.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}):\n{}",
                    std::fs::read_to_string(self.dir.join(format!("{name}.out")))
                        .unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// The last `lines` lines of every Sentinel's log and output (`migrate-havip`'s, when it is the script).
    pub fn sentinel_logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for host in 0..HOST_IPS.len() {
            for ext in ["log", "out"] {
                let path = self.dir.join(format!("sentinel-{}.{ext}", host + 1));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let _ = writeln!(out, "--- {} ---", path.display());
                out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// The full output of every Sentinel (where `migrate-havip` run as its script logs).
    pub fn sentinel_output(&self) -> String {
        (0..HOST_IPS.len())
            .map(|h| {
                std::fs::read_to_string(self.dir.join(format!("sentinel-{}.out", h + 1)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ScaleRedis {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What is not ready yet, per Sentinel and master (empty: all ready). Asked from the switch namespace.
fn not_ready(switch: &Netns, masters: &[ScaleMaster]) -> Result<Vec<String>> {
    let names: Vec<String> = masters.iter().map(|m| m.havip.master.clone()).collect();
    switch.try_run(move || {
        let mut missing = Vec::new();
        for (s, ip) in HOST_IPS.iter().enumerate() {
            let mut con = match admin_connection(SocketAddr::new(IpAddr::V4(*ip), SENTINEL_PORT)) {
                Ok(c) => c,
                Err(e) => {
                    missing.push(format!("sentinel {}: {e:#}", s + 1));
                    continue;
                }
            };
            for name in &names {
                let v: redis::Value = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(name)
                    .query(&mut con)
                    .with_context(|| format!("sentinel {}: SENTINEL MASTER {name}", s + 1))?;
                let f = fields(&v);
                let num = |k: &str| f.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                let flags = f.get("flags").map(String::as_str).unwrap_or("?");
                if flags != "master" || num("num-slaves") < 1 || num("num-other-sentinels") < 2 {
                    missing.push(format!(
                        "sentinel {} {name}: flags {flags}, {} replicas, {} other sentinels",
                        s + 1,
                        num("num-slaves"),
                        num("num-other-sentinels")
                    ));
                }
            }
        }
        Ok(missing)
    })?
}

fn admin_connection(addr: SocketAddr) -> Result<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let timeout = Duration::from_secs(1);
    let con = client
        .get_connection_with_timeout(timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

fn sentinel_debug(switch: &Netns, args: &'static [&'static str]) -> Result<()> {
    switch.try_run(|| {
        for ip in HOST_IPS {
            let mut con = admin_connection(SocketAddr::new(IpAddr::V4(ip), SENTINEL_PORT))?;
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("DEBUG");
            for a in args {
                cmd.arg(*a);
            }
            let _: redis::Value = cmd
                .query(&mut con)
                .with_context(|| format!("SENTINEL DEBUG on {ip}"))?;
        }
        Ok(())
    })?
}

/// A flat field/value reply (RESP2 array or RESP3 map) as a map.
fn fields(v: &redis::Value) -> BTreeMap<String, String> {
    fn text(v: &redis::Value) -> Option<String> {
        match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            redis::Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
    let pairs: Vec<(&redis::Value, &redis::Value)> = match v {
        redis::Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
        redis::Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
        .collect()
}

/// One HAVIP's figures. Times are milliseconds, signed, relative to its master's first `+switch-master`.
#[derive(Debug, Clone, PartialEq)]
pub struct HavipTiming {
    /// The master name.
    pub master: String,
    /// The HAVIP id.
    pub havip_id: String,
    /// The master's first `+switch-master` after the cut, ms after the cut.
    pub switch_ms: Option<f64>,
    /// The new host's first GARP for the VIP (negative: before the switch).
    pub garp_ms: Option<f64>,
    /// The fake cloud's move to the new host.
    pub move_ms: Option<f64>,
    /// The first successful `DescribeHaVips` covering the HAVIP after that move (what the manager sees as
    /// the cloud's confirmation).
    pub confirm_ms: Option<f64>,
    /// At the end, the cloud names the new host and the VIP is bound there.
    pub on_new_host: bool,
    /// After the heal, the old host no longer has the VIP bound (`None`: no heal).
    pub released_on_old: Option<bool>,
}

/// Calls of one API action after the cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionCalls {
    /// Requests answered (any answer).
    pub calls: usize,
    /// Of those, `RequestLimitExceeded`.
    pub throttled: usize,
}

/// The figures of one scale run.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// The VIP manager.
    pub method: Method,
    /// Per HAVIP, master order.
    pub havips: Vec<HavipTiming>,
    /// API requests from the cut to the end, per action.
    pub calls: BTreeMap<String, ActionCalls>,
    /// API requests before the cut (start-up: drift ranges, initial claims), and how many were throttled.
    pub setup_calls: ActionCalls,
    /// Claims reported failed: agent `claim failed` or unconfirmed `claimed` lines, Sentinel
    /// `-script-error` events (a `migrate-havip` that exited non-zero), from the cut on.
    pub failed_claims: Vec<String>,
    /// Agent log lines `cannot read the interface's addresses` (issue 13's netlink dump contention).
    pub netlink_errors: usize,
    /// GARP frames the fake's per-NIC limit dropped (whole run).
    pub garps_rate_limited: u64,
    /// Sentinel elections lost after the cut (`-failover-abort-not-elected`, any Sentinel): each delays
    /// that master's switch by twice `failover-timeout`.
    pub elections_aborted: usize,
    /// What else happened.
    pub notes: Vec<String>,
}

impl ScaleReport {
    /// Every `RequestLimitExceeded` answer after the cut.
    pub fn throttled(&self) -> usize {
        self.calls.values().map(|c| c.throttled).sum()
    }

    /// HAVIPs confirmed at all, and within `budget` of their switch.
    pub fn confirmed(&self, budget: Duration) -> (usize, usize) {
        let ms = budget.as_secs_f64() * 1e3;
        let all: Vec<f64> = self.havips.iter().filter_map(|h| h.confirm_ms).collect();
        (all.len(), all.iter().filter(|v| **v <= ms).count())
    }

    /// HAVIPs whose first GARP from the new host came after their `+switch-master` (or never came).
    pub fn garps_after_switch(&self) -> Vec<&HavipTiming> {
        self.havips
            .iter()
            .filter(|h| h.garp_ms.is_none_or(|g| g > 0.0))
            .collect()
    }

    /// One line per HAVIP.
    pub fn detail(&self) -> String {
        let mut out = format!(
            "{}: master | havip | switch after cut | first GARP | move | confirm (ms after switch) | on new host | released on old\n",
            self.method
        );
        for h in &self.havips {
            let _ = writeln!(
                out,
                "{} | {} | {} | {} | {} | {} | {} | {}",
                h.master,
                h.havip_id,
                ms(h.switch_ms),
                ms(h.garp_ms),
                ms(h.move_ms),
                ms(h.confirm_ms),
                h.on_new_host,
                h.released_on_old.map_or("-".into(), |b| b.to_string()),
            );
        }
        out
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("none".into(), |v| format!("{v:.0}"))
}

/// Nearest-rank percentile `p` (0..=100) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn spread(values: &[f64], total: usize) -> String {
    let missing = total - values.len();
    let f = |p| percentile(values, p).map_or("-".into(), |v| format!("{v:.0}"));
    let mut s = format!("{} / {} / {}", f(50.0), f(90.0), f(100.0));
    if missing > 0 {
        let _ = write!(s, " ({missing} missing)");
    }
    s
}

/// The markdown table over `runs`, one row per method (runs of a method pooled: per-HAVIP figures over
/// every run, counts summed).
pub fn table(runs: &[ScaleReport]) -> String {
    let mut out = String::from(
        "| method | runs x HAVIPs | cut → +switch-master, ms (median / max) | switch → first GARP, ms (median / p90 / max) | switch → confirm, ms (median / p90 / max) | confirmed (≤ 2 s) | API calls after the cut, per action | RequestLimitExceeded | failed claims |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut methods: Vec<Method> = runs.iter().map(|r| r.method).collect();
    methods.sort();
    methods.dedup();
    for m in methods {
        let rs: Vec<&ScaleReport> = runs.iter().filter(|r| r.method == m).collect();
        let havips: Vec<&HavipTiming> = rs.iter().flat_map(|r| &r.havips).collect();
        let switches: Vec<f64> = havips.iter().filter_map(|h| h.switch_ms).collect();
        let garps: Vec<f64> = havips.iter().filter_map(|h| h.garp_ms).collect();
        let confirms: Vec<f64> = havips.iter().filter_map(|h| h.confirm_ms).collect();
        let (confirmed, in_budget) = rs.iter().fold((0, 0), |(a, b), r| {
            let (x, y) = r.confirmed(CONFIRM_BUDGET);
            (a + x, b + y)
        });
        let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rs {
            for (action, c) in &r.calls {
                *calls.entry(action).or_default() += c.calls;
            }
        }
        let calls: Vec<String> = calls
            .iter()
            .map(|(a, n)| format!("{a} {}", per_run(*n, rs.len())))
            .collect();
        let throttled: usize = rs.iter().map(|r| r.throttled()).sum();
        let failed: usize = rs.iter().map(|r| r.failed_claims.len()).sum();
        let _ = writeln!(
            out,
            "| {m} | {} x {} | {} / {} | {} | {} | {confirmed} ({in_budget}) of {} | {} | {} | {} |",
            rs.len(),
            rs.first().map_or(0, |r| r.havips.len()),
            percentile(&switches, 50.0).map_or("-".into(), |v| format!("{v:.0}")),
            percentile(&switches, 100.0).map_or("-".into(), |v| format!("{v:.0}")),
            spread(&garps, havips.len()),
            spread(&confirms, havips.len()),
            havips.len(),
            calls.join(", "),
            per_run(throttled, rs.len()),
            per_run(failed, rs.len()),
        );
    }
    out
}

fn per_run(n: usize, runs: usize) -> String {
    if runs <= 1 {
        n.to_string()
    } else {
        format!("{:.1}/run", n as f64 / runs as f64)
    }
}

/// The outcome of one scale run.
#[derive(Debug)]
pub struct ScaleOutcome {
    /// The figures.
    pub report: ScaleReport,
    /// The agents' logs (and `migrate-havip`'s initial claims).
    pub manager_logs: String,
    /// The tails of the Sentinels' logs and outputs.
    pub sentinel_logs: String,
    /// The run's directory, when kept.
    pub dir: Option<PathBuf>,
}

impl ScaleOutcome {
    /// The figures, per-HAVIP detail, notes and log tails, for a failing test.
    pub fn diagnostics(&self) -> String {
        format!(
            "{}\n{}\nnotes: {:#?}\nfailed claims: {:#?}\n--- managers (last 200 lines) ---\n{}\n--- sentinels ---\n{}",
            table(std::slice::from_ref(&self.report)),
            self.report.detail(),
            self.report.notes,
            self.report.failed_claims,
            last_lines(&self.manager_logs, 200),
            self.sentinel_logs
        )
    }
}

fn ms_between(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// Everything a scale run starts. Fields drop in declaration order: the managers stop first, then the
/// subscriptions, Redis and Sentinel, and last the namespaces and the fake cloud.
struct Bed {
    managers: Managers,
    events: SentinelEvents,
    redis: ScaleRedis,
    topo: Topology,
}

impl Bed {
    /// Builds the topology with one HAVIP per master, starts Redis + Sentinel and the event subscriptions,
    /// then the managers, and waits for the initial state. Returns notes on the way.
    async fn start(
        opts: &ScaleOptions,
        dir: &Path,
        masters: &[ScaleMaster],
    ) -> Result<(Bed, Vec<String>)> {
        let mut notes = Vec::new();
        let topo = Topology::build("scl", DriftRange::Empty).await?;
        let fake = topo.fake();
        fake.set_move_delay(Duration::ZERO)
            .context("setting the fake cloud's move delay")?;
        fake.set_rate_limit(opts.rate_limit);
        for m in masters {
            fake.add_havip(HavipSpec::new(&m.havip.havip_id, m.havip.vip).check_associate(true));
        }
        let fleet = Fleet {
            havips: masters.iter().map(|m| m.havip.clone()).collect(),
            hosts: vec![MASTER_HOST, REPLICA_HOST],
            redis_port: None,
        };
        let (managers, setup) =
            Managers::prepare_fleet(opts.method, &topo, dir, opts.binaries.clone(), fleet)?;
        let mut redis = ScaleRedis::start(&topo, dir, masters, &setup)?;
        redis
            .wait_ready(topo.switch(), masters, Duration::from_secs(60))
            .await?;
        if opts.quick_settle {
            sentinel_debug(topo.switch(), &QUICK_SETTLE)?;
            notes.push(format!("sentinel timers: {}", QUICK_SETTLE.join(" ")));
        }
        let sentinels: Vec<SocketAddr> = HOST_IPS
            .iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), SENTINEL_PORT))
            .collect();
        let events = SentinelEvents::start(topo.switch(), sentinels)?;
        let mut bed = Bed {
            managers,
            events,
            redis,
            topo,
        };
        let started = Instant::now();
        bed.managers.start(MASTER_HOST).await?;
        let initial = wait_for(
            "every HAVIP on the master host (cloud and binding) and, for the agent, the replica host in its range",
            Duration::from_secs(60),
            || initial_state(&bed.topo, masters, opts.method),
        )
        .await;
        if let Err(e) = initial {
            bail!("{e:#}\n{}", bed.managers.logs());
        }
        notes.push(format!(
            "initial state after {:.3}s",
            started.elapsed().as_secs_f64()
        ));
        Ok((bed, notes))
    }

    /// Cuts the master host's link and waits until every HAVIP moved and was confirmed (a note if not), then
    /// 1 s more: calls that trail the confirmation (re-announces, verifies) belong to the failover too.
    /// Returns when the cut was made and when the failover window ends.
    async fn cut(
        &self,
        masters: &[ScaleMaster],
        timeout: Duration,
        notes: &mut Vec<String>,
    ) -> Result<(SystemTime, SystemTime)> {
        let cut_at = SystemTime::now();
        self.topo
            .switch()
            .link_set(&self.topo.port_of(MASTER_HOST), false)?;
        let settled = wait_for(
            "every HAVIP moved to the replica host and confirmed",
            timeout,
            || Ok(all_confirmed(self.topo.fake(), masters, cut_at)),
        )
        .await;
        if let Err(e) = settled {
            notes.push(format!("{e:#}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((cut_at, SystemTime::now()))
    }

    /// Brings the link back and waits until the old master host has released every VIP (a note if not).
    /// Returns the masters whose VIP it still has.
    async fn heal(&self, masters: &[ScaleMaster], notes: &mut Vec<String>) -> Result<Vec<String>> {
        let topo = &self.topo;
        topo.switch().link_set(&topo.port_of(MASTER_HOST), true)?;
        let released = wait_for(
            "the old master host released every VIP",
            Duration::from_secs(30),
            || Ok(bound_on(topo, MASTER_HOST, masters)?.is_empty()),
        )
        .await;
        if let Err(e) = released {
            notes.push(format!("{e:#}"));
        }
        bound_on(topo, MASTER_HOST, masters)
    }
}

/// Runs one scale run. Must run on a thread that lives for the whole run (processes are tied to it), like
/// [`crate::run`].
pub async fn run_scale(opts: &ScaleOptions) -> Result<ScaleOutcome> {
    if !opts.method.uses_api() {
        bail!(
            "the scale run compares the agent and migrate-havip, not {}",
            opts.method
        );
    }
    require_tools(opts.method)?;
    let masters = masters(opts.masters)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("havip-scale-{}-", opts.method))
        .tempdir()
        .context("creating the run's temp dir")?;
    let (bed, mut notes) = Bed::start(opts, dir.path(), &masters).await?;
    let window = bed.cut(&masters, opts.settle_timeout, &mut notes).await?;
    let still_bound = if opts.heal {
        Some(bed.heal(&masters, &mut notes).await?)
    } else {
        None
    };
    let mut manager_logs = bed.managers.logs();
    if opts.method == Method::Migrate {
        manager_logs.push_str(&bed.redis.sentinel_output());
    }
    let mut report = collect(
        &bed.topo,
        &masters,
        opts.method,
        &bed.events.events(),
        window,
        still_bound,
        &manager_logs,
        notes,
    )?;
    let sentinel_logs = bed.redis.sentinel_logs(30);
    drop(bed);
    let kept = opts.keep_dir.then(|| dir.keep());
    if let Some(d) = &kept {
        report.notes.push(format!("run dir kept: {}", d.display()));
    }
    Ok(ScaleOutcome {
        report,
        manager_logs,
        sentinel_logs,
        dir: kept,
    })
}

/// The masters whose VIP is bound on `host` now.
fn bound_on(topo: &Topology, host: usize, masters: &[ScaleMaster]) -> Result<Vec<String>> {
    let addrs = topo.host(host).ns.ipv4_addrs(Lab::HOST_IF)?;
    Ok(masters
        .iter()
        .filter(|m| addrs.contains(&m.havip.vip_cidr()))
        .map(|m| m.havip.master.clone())
        .collect())
}

fn initial_state(topo: &Topology, masters: &[ScaleMaster], method: Method) -> Result<bool> {
    let fake = topo.fake();
    if bound_on(topo, MASTER_HOST, masters)?.len() != masters.len()
        || !bound_on(topo, REPLICA_HOST, masters)?.is_empty()
    {
        return Ok(false);
    }
    Ok(masters.iter().all(|m| {
        fake.havip(&m.havip.havip_id).is_some_and(|h| {
            h.instance_id.as_deref() == Some(INSTANCE_IDS[MASTER_HOST])
                // The agent adds its instance to the range ahead of any failover: wait for that steady state.
                && (method != Method::Agent || h.in_range(INSTANCE_IDS[REPLICA_HOST]))
        })
    }))
}

fn moved_at(fake: &FakeCloud, havip_id: &str, since: SystemTime) -> Option<SystemTime> {
    fake.moves()
        .into_iter()
        .find(|mv| mv.havip_id == havip_id && mv.to == INSTANCE_IDS[REPLICA_HOST] && mv.at >= since)
        .map(|mv| mv.at)
}

/// Whether `req` is a successful `DescribeHaVips` whose answer covers `havip_id`.
fn describes(req: &RecordedRequest, havip_id: &str) -> bool {
    req.action == "DescribeHaVips"
        && req.error_code.is_none()
        && req.http_status == 200
        && match req.body.get("HaVipIds").and_then(|v| v.as_array()) {
            Some(ids) => ids.iter().any(|v| v.as_str() == Some(havip_id)),
            // Without ids the answer lists every HAVIP (filters aside: the managers filter by id).
            None => true,
        }
}

fn confirmed_at(
    requests: &[RecordedRequest],
    havip_id: &str,
    moved: SystemTime,
) -> Option<SystemTime> {
    requests
        .iter()
        .find(|r| r.at >= moved && describes(r, havip_id))
        .map(|r| r.at)
}

fn all_confirmed(fake: &FakeCloud, masters: &[ScaleMaster], since: SystemTime) -> bool {
    let requests = fake.requests();
    masters.iter().all(|m| {
        moved_at(fake, &m.havip.havip_id, since)
            .and_then(|t| confirmed_at(&requests, &m.havip.havip_id, t))
            .is_some()
    })
}

/// The first `+switch-master` of each master after `since`, by master name.
fn switches(events: &[SentinelEvent], since: SystemTime) -> BTreeMap<String, SystemTime> {
    let mut out = BTreeMap::new();
    for e in events {
        if e.channel == "+switch-master"
            && e.at >= since
            && let Some(name) = e.payload.split_whitespace().next()
        {
            out.entry(name.to_owned()).or_insert(e.at);
        }
    }
    out
}

/// Lines of the managers' output that report a failed or unconfirmed claim.
fn failed_claim_lines(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| {
            l.contains("claim failed") || (l.contains(" claimed") && l.contains("confirmed=false"))
        })
        .map(str::to_owned)
        .collect()
}

#[allow(clippy::too_many_arguments)] // One call site; every argument is a different record of the run.
fn collect(
    topo: &Topology,
    masters: &[ScaleMaster],
    method: Method,
    events: &[SentinelEvent],
    (cut_at, end_at): (SystemTime, SystemTime),
    still_bound: Option<Vec<String>>,
    manager_logs: &str,
    mut notes: Vec<String>,
) -> Result<ScaleReport> {
    let fake = topo.fake();
    let requests = fake.requests();
    let garps = topo.garp().seen();
    let new_mac = topo.host(REPLICA_HOST).mac;
    let switched = switches(events, cut_at);
    let bound_new = bound_on(topo, REPLICA_HOST, masters)?;
    let mut havips = Vec::new();
    for m in masters {
        let id = &m.havip.havip_id;
        let switch = switched.get(&m.havip.master).copied();
        if switch.is_none() {
            notes.push(format!(
                "{}: no +switch-master after the cut",
                m.havip.master
            ));
        }
        let rel = |t: Option<SystemTime>| Some(ms_between(t?, switch?));
        let garp = garps
            .iter()
            .find(|g| g.ip == m.havip.vip && g.mac == new_mac && g.at >= cut_at)
            .map(|g| g.at);
        let moved = moved_at(fake, id, cut_at);
        let confirm = moved.and_then(|t| confirmed_at(&requests, id, t));
        let on_new_host = fake
            .havip(id)
            .is_some_and(|h| h.instance_id.as_deref() == Some(INSTANCE_IDS[REPLICA_HOST]))
            && bound_new.contains(&m.havip.master);
        havips.push(HavipTiming {
            master: m.havip.master.clone(),
            havip_id: id.clone(),
            switch_ms: switch.map(|s| ms_between(s, cut_at)),
            garp_ms: rel(garp),
            move_ms: rel(moved),
            confirm_ms: rel(confirm),
            on_new_host,
            released_on_old: still_bound.as_ref().map(|b| !b.contains(&m.havip.master)),
        });
    }
    let mut calls: BTreeMap<String, ActionCalls> = BTreeMap::new();
    let mut setup_calls = ActionCalls::default();
    for r in &requests {
        let throttled = r.error_code.as_deref() == Some("RequestLimitExceeded");
        let c = if r.at < cut_at {
            &mut setup_calls
        } else if r.at <= end_at {
            calls.entry(r.action.clone()).or_default()
        } else {
            continue;
        };
        c.calls += 1;
        c.throttled += usize::from(throttled);
    }
    let mut failed_claims = failed_claim_lines(manager_logs);
    failed_claims.extend(
        events
            .iter()
            .filter(|e| e.channel == "-script-error" && e.at >= cut_at)
            .map(|e| format!("sentinel {}: -script-error {}", e.sentinel + 1, e.payload)),
    );
    Ok(ScaleReport {
        method,
        havips,
        calls,
        setup_calls,
        failed_claims,
        netlink_errors: manager_logs
            .matches("cannot read the interface's addresses")
            .count(),
        garps_rate_limited: fake.garps_rate_limited(),
        elections_aborted: events
            .iter()
            .filter(|e| e.channel == "-failover-abort-not-elected" && e.at >= cut_at)
            .count(),
        notes,
    })
}

/// Parses `SCALE_MASTERS`-style knobs: the value, or `default` when unset; a clear error otherwise.
pub fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    fn event(ms: u64, channel: &str, payload: &str) -> SentinelEvent {
        SentinelEvent {
            at: t(ms),
            sentinel: 1,
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn masters_get_distinct_names_ids_vips_and_ports_within_bounds() {
        let m = masters(20).unwrap();
        assert_eq!(m[0].havip.master, "m01");
        assert_eq!(m[19].havip.havip_id, "havip-s0000020");
        assert_eq!(m[19].havip.vip, Ipv4Addr::new(198, 18, 0, 120));
        assert_eq!(m[19].port, 6419);
        let e = masters(0).unwrap_err().to_string();
        assert!(e.contains("1..=99"), "{e}");
        assert!(masters(MAX_MASTERS + 1).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 90.0), Some(18.0));
        assert_eq!(percentile(&v, 100.0), Some(20.0));
        assert_eq!(percentile(&[-3.0], 50.0), Some(-3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn each_masters_first_switch_after_the_cut_counts() {
        let events = [
            event(5, "+switch-master", "m01 198.18.0.11 6400 198.18.0.12 6400"),
            event(
                20,
                "+switch-master",
                "m01 198.18.0.11 6400 198.18.0.12 6400",
            ),
            event(
                30,
                "+switch-master",
                "m01 198.18.0.12 6400 198.18.0.11 6400",
            ),
            event(25, "+promoted-slave", "slave 198.18.0.12:6401 ... @ m02"),
            event(
                40,
                "+switch-master",
                "m02 198.18.0.11 6401 198.18.0.12 6401",
            ),
        ];
        let s = switches(&events, t(10));
        assert_eq!(s.get("m01"), Some(&t(20)));
        assert_eq!(s.get("m02"), Some(&t(40)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn failed_and_unconfirmed_claims_are_found_in_the_logs() {
        let logs = "\
2026-12-01T02:07:37Z  INFO claimed havip=havip-s0000002 failover_id=m02-10 epoch=10 confirmed=true frames=2\n\
2026-12-01T02:07:38Z  INFO claimed havip=havip-s0000003 failover_id=m03-11 epoch=11 confirmed=false frames=2\n\
2026-12-01T02:07:39Z ERROR claim failed havip=havip-s0000004 error=boom\n\
2026-12-01T02:07:40Z  INFO claim step havip=havip-s0000005 step=Confirmed\n";
        let failed = failed_claim_lines(logs);
        assert_eq!(failed.len(), 2, "{failed:#?}");
        assert!(failed[0].contains("havip-s0000003"));
        assert!(failed[1].contains("havip-s0000004"));
    }

    #[test]
    fn the_table_pools_the_runs_of_a_method() {
        let run = |garp: f64, confirm: Option<f64>, throttled: usize| ScaleReport {
            method: Method::Agent,
            havips: vec![HavipTiming {
                master: "m01".into(),
                havip_id: "havip-s0000001".into(),
                switch_ms: Some(3000.0),
                garp_ms: Some(garp),
                move_ms: Some(garp),
                confirm_ms: confirm,
                on_new_host: true,
                released_on_old: None,
            }],
            calls: BTreeMap::from([(
                "DescribeHaVips".to_owned(),
                ActionCalls {
                    calls: 4,
                    throttled,
                },
            )]),
            setup_calls: ActionCalls::default(),
            failed_claims: Vec::new(),
            netlink_errors: 0,
            garps_rate_limited: 0,
            elections_aborted: 0,
            notes: Vec::new(),
        };
        let runs = [run(-50.0, Some(60.0), 0), run(20.0, Some(2500.0), 2)];
        assert_eq!(runs[1].confirmed(CONFIRM_BUDGET), (1, 0));
        assert_eq!(runs[1].garps_after_switch().len(), 1);
        let text = table(&runs);
        let row = text.lines().nth(2).unwrap();
        assert!(
            row.starts_with("| agent | 2 x 1 | 3000 / 3000 | -50 / 20 / 20 |"),
            "{row}"
        );
        assert!(row.contains("| 2 (1) of 2 |"), "{row}");
        assert!(row.contains("DescribeHaVips 4.0/run"), "{row}");
        assert!(row.contains("| 1.0/run |"), "{row}");
    }
}
