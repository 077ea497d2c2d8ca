//! The idle footprint of a VIP manager in the lab: Redis + 3 Sentinels + 1 HAVIP with nothing happening.
//!
//! Owns one idle run: the lab brought up as a failover run would be (the same topology, Sentinel set-up and
//! VIP managers, `lab::method`), the initial state awaited, a warm-up, then `/proc` sampled on the master
//! host (node 0) and a replica host (node 1) for the window: the CPU time of the manager's processes with
//! their reaped children (`utime + stime + cutime + cstime`: keepalived's `vrrp_script` forks a shell and a
//! `redis-cli` every second, and they count) and their summed `VmRSS`. It does not compare methods or print
//! tables (`benches/idle.rs` does).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::method::{Binaries, Managers, Method, require_tools};
use super::scenario::{vip_holders, wait_for};
use super::topology::{HAVIP_ID, HOST_IPS, INSTANCE_IDS, Topology};

/// The host roles an idle run samples: the master's host and one replica's.
pub const ROLES: [(&str, usize); 2] = [("master host", 0), ("replica host", 1)];

/// What one idle run does.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// From the initial state (VIP on node 0, the cloud agreeing) to the start of the window.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    /// How often `VmRSS` is sampled in the window.
    pub sample_every: Duration,
    /// Where the binaries are (`havip-agent` for [`Method::Agent`]).
    pub binaries: Binaries,
    /// Lines added to the `[sentinel]` table of every agent's config (e.g. `heartbeat = "200ms"`), to
    /// measure a setting against the defaults in the same run.
    pub sentinel_settings: Vec<String>,
}

/// One process group's figures over the window.
#[derive(Debug, Clone)]
pub struct HostIdle {
    /// CPU seconds used in the window (user + system, with reaped children).
    pub cpu_s: f64,
    /// The window's length, seconds.
    pub window_s: f64,
    /// `VmRSS` samples, KiB, summed over the manager's processes.
    pub rss_kib: Vec<u64>,
    /// How many manager processes were summed (keepalived: 2, the agent: 1).
    pub processes: usize,
}

impl HostIdle {
    /// CPU time as a share of one core, percent.
    pub fn core_pct(&self) -> f64 {
        100.0 * self.cpu_s / self.window_s
    }

    /// CPU seconds per 60 s.
    pub fn cpu_per_min(&self) -> f64 {
        self.cpu_s * 60.0 / self.window_s
    }

    /// Median `VmRSS`, MiB.
    pub fn rss_median_mib(&self) -> f64 {
        let mut v = self.rss_kib.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
    }
}

/// `/proc/<pid>/stat`: CPU clock ticks of the process and of its reaped children, and its parent and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// `comm`.
    pub comm: String,
    /// `ppid`.
    pub ppid: u32,
    /// `utime + stime + cutime + cstime`, clock ticks.
    pub ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat` (the command name may hold spaces and parentheses: the fields
/// start after the last `)`).
pub fn parse_stat(text: &str) -> Result<ProcStat> {
    let open = text
        .find('(')
        .ok_or_else(|| anyhow!("no '(' in {text:?}"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| anyhow!("no ')' in {text:?}"))?;
    let comm = text.get(open + 1..close).unwrap_or_default().to_owned();
    // After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<i64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("field {n} missing in {text:?}"))?
            .parse()
            .with_context(|| format!("field {n} of {text:?}"))
    };
    let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Ok(ProcStat {
        comm,
        ppid: u32::try_from(field(4)?).context("ppid")?,
        ticks: u64::try_from(ticks).context("negative cpu time")?,
    })
}

/// Parses `VmRSS` (KiB) out of the text of `/proc/<pid>/status`.
pub fn parse_vmrss(text: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS line"))?
        .parse()
        .context("VmRSS is not a number")
}

fn stat_of(pid: u32) -> Result<ProcStat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text).with_context(|| format!("parsing {path}"))
}

fn rss_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vmrss(&text).with_context(|| format!("parsing {path}"))
}

/// `root` and its descendants with the same command name (keepalived's VRRP child; not the check scripts it
/// forks, whose CPU reaches the parent's `cutime` when they are reaped).
pub fn manager_pids(root: u32) -> Result<Vec<u32>> {
    let comm = stat_of(root)?.comm;
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go (the check scripts): one gone by now is skipped.
        if let Ok(st) = stat_of(pid) {
            all.push((pid, st));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            all.iter()
                .filter(|(_, st)| st.ppid == parent && st.comm == comm)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    Ok(out)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Samples each group of processes for `opts.window`: CPU at both ends, `VmRSS` every `opts.sample_every`.
async fn sample(groups: &[Vec<u32>], opts: &IdleOptions) -> Result<Vec<HostIdle>> {
    let ticks =
        |pids: &Vec<u32>| -> Result<u64> { pids.iter().map(|p| Ok(stat_of(*p)?.ticks)).sum() };
    let rss = |pids: &Vec<u32>| -> Result<u64> { pids.iter().map(|p| rss_of(*p)).sum() };
    let start: Vec<u64> = groups.iter().map(ticks).collect::<Result<_>>()?;
    let started = Instant::now();
    let mut rss_samples: Vec<Vec<u64>> = vec![Vec::new(); groups.len()];
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < opts.window {
        for (g, s) in groups.iter().zip(&mut rss_samples) {
            s.push(rss(g)?);
        }
        next += opts.sample_every;
        tokio::time::sleep_until(next).await;
    }
    let window_s = started.elapsed().as_secs_f64();
    let end: Vec<u64> = groups.iter().map(ticks).collect::<Result<_>>()?;
    Ok(groups
        .iter()
        .zip(start.iter().zip(&end))
        .zip(rss_samples)
        .map(|((g, (a, b)), rss_kib)| HostIdle {
            cpu_s: b.saturating_sub(*a) as f64 / ticks_per_s(),
            window_s,
            rss_kib,
            processes: g.len(),
        })
        .collect())
}

/// Adds `lines` to the `[sentinel]` table of the agent config at `path`, and checks the result loads.
fn add_sentinel_settings(path: &std::path::Path, lines: &[String]) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table = "[sentinel]\n";
    if !text.contains(table) {
        bail!("{} has no [sentinel] table", path.display());
    }
    let text = text.replacen(table, &format!("{table}{}\n", lines.join("\n")), 1);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    havip_agent::config::Config::load(path)
        .map_err(|e| anyhow!("{} with {lines:?} is invalid: {e}", path.display()))?;
    Ok(())
}

/// One idle run of `method`: the figures per [`ROLES`] entry, in that order.
pub async fn run(method: Method, opts: &IdleOptions) -> Result<Vec<HostIdle>> {
    if !matches!(method, Method::Agent | Method::Keepalived) {
        bail!("{method} has no long-running process to measure at idle");
    }
    require_tools(method)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("havip-idle-{method}-"))
        .tempdir()
        .context("creating the run's temp dir")?;
    // Drop order (reverse of declaration): managers, redis, topology, dir.
    let topo = Topology::build("idle", method.drift_range()).await?;
    let (mut managers, setup) =
        Managers::prepare(method, &topo, dir.path(), opts.binaries.clone())?;
    if method == Method::Agent && !opts.sentinel_settings.is_empty() {
        for i in 0..HOST_IPS.len() {
            add_sentinel_settings(
                &dir.path().join(format!("host{}/havip-agent.toml", i + 1)),
                &opts.sentinel_settings,
            )?;
        }
    }
    let _redis = super::scenario::start_redis(&topo, &setup).await?;
    managers.start(0).await?;
    let fake = topo.fake().clone();
    let initial = wait_for(
        "the VIP on host 1 only and the cloud holder ins-lab-1",
        Duration::from_secs(30),
        || {
            let cloud = fake.havip(HAVIP_ID).and_then(|h| h.instance_id);
            Ok(vip_holders(&topo)? == vec![0] && cloud.as_deref() == Some(INSTANCE_IDS[0]))
        },
    )
    .await;
    if let Err(e) = initial {
        bail!("{e:#}\n{}", managers.logs());
    }
    tokio::time::sleep(opts.warmup).await;
    let mut groups = Vec::new();
    for (role, i) in ROLES {
        let root = managers
            .pid(i)
            .ok_or_else(|| anyhow!("no {method} process on the {role}"))?;
        groups.push(manager_pids(root)?);
    }
    let figures = sample(&groups, opts).await;
    for i in 0..HOST_IPS.len() {
        if !managers.running(i) {
            bail!(
                "{method} on host {} exited during the idle run\n{}",
                i + 1,
                managers.logs()
            );
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let text = "4242 (keep (a) live) S 4200 4242 4242 0 -1 4194560 300 0 0 0 \
                    12 7 30 5 20 0 1 0 100 1000 200";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.comm, "keep (a) live");
        assert_eq!(st.ppid, 4200);
        assert_eq!(st.ticks, 12 + 7 + 30 + 5);
        let err = parse_stat("12 (x) S 1 2").unwrap_err();
        assert!(format!("{err:#}").contains("field"), "{err:#}");
    }

    #[test]
    fn vmrss_is_read_in_kib_and_its_absence_is_named() {
        let text = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    8123 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(text).unwrap(), 8123);
        let err = parse_vmrss("Name:\tkthread\n").unwrap_err();
        assert!(err.to_string().contains("VmRSS"), "{err}");
    }

    #[test]
    fn this_process_is_found_and_measured() {
        let me = std::process::id();
        let pids = manager_pids(me).unwrap();
        assert_eq!(pids[0], me);
        assert!(rss_of(me).unwrap() > 0);
    }
}
