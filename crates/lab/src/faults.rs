//! The fault matrix: the agent (`havip-agent run`) on the real Sentinel lab, one run per fault (issue 11).
//!
//! Owns the rows ([`Row`]: what each fault is, how it is applied and healed, what failover it is combined
//! with), the run of one row ([`run_row`], built from the lab's pieces: topology, Redis + Sentinel, the
//! agents, the observers and the client), the row's figures ([`RowReport`]: whether the VIP ended on the
//! master, how long two hosts held it, lost acknowledged writes, [`recovery`] time) and the table
//! ([`matrix_markdown`]). The per-run figures themselves come from `lab::report` ([`RunReport`]), so the
//! matrix and the comparison agree on every definition they share. Everything a row adds to the lab
//! (nftables tables in host namespaces, a read-only mount over a lock directory, a garbage-speaking server,
//! a fake metadata service, the clock-offset file) is undone by drop guards, also on error or panic.
//! It does not run the bench (see `benches/faults.rs`).

use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::client::{Client, ClientSpec};
use super::method::{Binaries, Managers, Method, require_tools};
use super::observe::{SentinelEvents, VipMonitor};
use super::report::{Losses, Records, RunReport, exact_since, promoted_target};
use super::scenario::{Scenario, Timeline, collect, vip_holders, wait_for};
use super::topology::{
    HAVIP_ID, HOST_IPS, INSTANCE_IDS, MASTER_NAME, REDIS_PORT, SENTINEL_PORT, SWITCH_IP, Topology,
    VIP, vip_cidr,
};
use havip_testkit::fake::{FakeMetadata, Fault, FaultKind, MetadataSpec, RoleCredentials};
use havip_testkit::testbed::netns::{Lab, Netns};
use havip_testkit::testbed::redis::RedisLab;

/// Acknowledged writes count as flowing again after the last gap longer than this between surviving acks
/// (the client writes every 2 ms; a gap this long is an outage, not scheduling noise).
pub const FLOWING_GAP: Duration = Duration::from_millis(200);

/// The host whose Sentinel the Sentinel rows disturb (node index): not the master's, so the master's
/// failure still leaves two Sentinels that see it.
pub const DISTURBED_SENTINEL: usize = 2;

/// The libfaketime library the clock rows preload (Debian `faketime`; the MT build, the agent is
/// multi-threaded).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// One row of the fault matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Row {
    /// 1: every API call answers HTTP 503 while the master is killed.
    Api5xx,
    /// 2: every API call answers `RequestLimitExceeded` while the master is killed.
    ApiThrottle,
    /// 3: every API call takes effect but answers after 5 s (the agent's `cloud.timeout` is 3 s).
    ApiTimeout,
    /// 4: every API call is accepted and never answered (no effect).
    ApiHang,
    /// 5: the metadata service is down when the agents start (role credentials); it comes back later.
    MetadataDownAtStart,
    /// 6: the metadata service is down while short-lived role credentials need a refresh, during a failover.
    MetadataDownAtRefresh,
    /// 7: one of three Sentinels is killed with the master.
    SentinelDown,
    /// 8: one Sentinel's port drops every packet (nftables in its namespace) while the master is killed.
    SentinelStalled,
    /// 9: one Sentinel is replaced by a server answering broken RESP on its address and port.
    SentinelGarbage,
    /// 10: the new master's agent is SIGKILLed at the leader's `+promoted-slave` and restarted 500 ms later.
    AgentKilledMidClaim,
    /// 11: the master host's own interface (`eth0` in its namespace) goes down, then up.
    InterfaceDownUp,
    /// 12: every host's lock directory is removed, then the master is killed.
    LockDirMissing,
    /// 13: every host's lock directory is emptied and made immutable (no file can be created in it), then
    /// the master is killed.
    LockDirUnwritable,
    /// 14: every agent's wall clock jumps 10 minutes ahead, then the master is killed.
    ClockAhead,
    /// 15: every agent's wall clock jumps 10 minutes back, then the master is killed.
    ClockBehind,
    /// 16: partial partition held 30 s (the master reaches the client but not the other Redis hosts) during
    /// which Sentinel cannot fail over (no eligible replica).
    PartitionNoFailover,
}

/// Where a row's recovery time is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryFrom {
    /// The fault instant: the agent is expected to recover while the fault is on.
    Fault,
    /// The heal: the fault itself blocks recovery (nothing can move the VIP, or nothing should).
    Heal,
}

impl fmt::Display for RecoveryFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoveryFrom::Fault => "fault",
            RecoveryFrom::Heal => "heal",
        })
    }
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 16] = [
        Row::Api5xx,
        Row::ApiThrottle,
        Row::ApiTimeout,
        Row::ApiHang,
        Row::MetadataDownAtStart,
        Row::MetadataDownAtRefresh,
        Row::SentinelDown,
        Row::SentinelStalled,
        Row::SentinelGarbage,
        Row::AgentKilledMidClaim,
        Row::InterfaceDownUp,
        Row::LockDirMissing,
        Row::LockDirUnwritable,
        Row::ClockAhead,
        Row::ClockBehind,
        Row::PartitionNoFailover,
    ];

    /// The row's number (1..=16), as in issue 11's list.
    pub fn number(self) -> u8 {
        Row::ALL
            .iter()
            .position(|r| *r == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The row with that number.
    pub fn from_number(n: u8) -> Option<Row> {
        Row::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// Parses a row list: `all`, or numbers and ranges separated by commas (`1,2,5-7`). An error names the
    /// entry that is wrong.
    pub fn parse_list(text: &str) -> Result<Vec<Row>, String> {
        let text = text.trim();
        if text.is_empty() || text == "all" {
            return Ok(Row::ALL.to_vec());
        }
        let num = |s: &str| -> Result<Row, String> {
            s.trim()
                .parse::<u8>()
                .ok()
                .and_then(Row::from_number)
                .ok_or_else(|| format!("{s:?} is not a row number (1..=16)"))
        };
        let mut out = Vec::new();
        for entry in text.split(',') {
            match entry.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range {entry:?} runs backwards"));
                    }
                    out.extend(Row::ALL.into_iter().filter(|r| *r >= a && *r <= b));
                }
                None => out.push(num(entry)?),
            }
        }
        out.dedup();
        Ok(out)
    }

    /// The fault, in a few words.
    pub fn fault(self) -> &'static str {
        match self {
            Row::Api5xx => "API 5xx",
            Row::ApiThrottle => "API throttling",
            Row::ApiTimeout => "API timeouts",
            Row::ApiHang => "API hanging connections",
            Row::MetadataDownAtStart => "metadata down at start",
            Row::MetadataDownAtRefresh => "metadata down during a role refresh",
            Row::SentinelDown => "one of three Sentinels down",
            Row::SentinelStalled => "one Sentinel stalled",
            Row::SentinelGarbage => "one Sentinel answering garbage",
            Row::AgentKilledMidClaim => "agent SIGKILLed mid-claim",
            Row::InterfaceDownUp => "master's interface down and up",
            Row::LockDirMissing => "lock directory missing",
            Row::LockDirUnwritable => "lock directory unwritable",
            Row::ClockAhead => "clock jump +10 min",
            Row::ClockBehind => "clock jump -10 min",
            Row::PartitionNoFailover => "partial partition, Sentinel cannot fail over",
        }
    }

    /// What the run does: the fault, what it is combined with, and the heal.
    pub fn describe(self) -> &'static str {
        match self {
            Row::Api5xx => {
                "every API call answers HTTP 503 from the fault to the heal; the master's redis-server is \
                 SIGKILLed at the fault and restarted at the heal"
            }
            Row::ApiThrottle => {
                "every API call answers RequestLimitExceeded from the fault to the heal; master killed as in 1"
            }
            Row::ApiTimeout => {
                "every API call takes effect but is answered 5 s late (cloud.timeout is 3 s) from the fault to \
                 the heal; master killed as in 1"
            }
            Row::ApiHang => {
                "every API call is accepted and never answered (held 60 s, no effect) from the fault to the \
                 heal; master killed as in 1"
            }
            Row::MetadataDownAtStart => {
                "the agents use the CAM role (no keys in their environment); the metadata service refuses \
                 connections (TCP reset, nftables on every host) when they start and until the heal; the \
                 client writes from the start; no failover"
            }
            Row::MetadataDownAtRefresh => {
                "the agents use the CAM role with credentials that expire 302 s after the start, so every \
                 API call wants a refresh (the agent refreshes 300 s before expiry); the metadata service \
                 refuses connections from the fault to the heal; master killed as in 1"
            }
            Row::SentinelDown => {
                "host 3's Sentinel is SIGKILLed with the master's redis-server at the fault; both restarted at \
                 the heal"
            }
            Row::SentinelStalled => {
                "host 3's Sentinel port drops every packet (nftables input and output in its namespace) from \
                 the fault to the heal; master killed as in 1"
            }
            Row::SentinelGarbage => {
                "host 3's Sentinel is killed and a server answering broken RESP to every read listens on its \
                 address and port from the fault to the heal (then the Sentinel is restarted); master killed \
                 as in 1"
            }
            Row::AgentKilledMidClaim => {
                "master killed as in 1; the new master's agent is SIGKILLed at the leader's +promoted-slave \
                 and restarted 500 ms later"
            }
            Row::InterfaceDownUp => {
                "the master host's eth0 (inside its namespace) is set down at the fault and up at the heal; \
                 Sentinel fails over meanwhile"
            }
            Row::LockDirMissing => {
                "every host's claim.lock_dir is removed (recursively) at the fault; master killed as in 1"
            }
            Row::LockDirUnwritable => {
                "every host's claim.lock_dir is emptied and made immutable (chattr +i: root ignores modes, \
                 not this) from the fault to the heal; master killed as in 1"
            }
            Row::ClockAhead => {
                "every agent runs under libfaketime (wall clock only, DONT_FAKE_MONOTONIC=1); its offset file \
                 goes from +0 to +600 s at the fault and stays; the fake cloud refuses signatures more than \
                 5 min off (AuthFailure.SignatureExpire, with a Date header); master killed as in 1"
            }
            Row::ClockBehind => "as 14 with -600 s",
            Row::PartitionNoFailover => {
                "an nftables bridge filter cuts the master's port off from the other Redis hosts (the client \
                 still reaches it) for 30 s, and both replicas have replica-priority 0 (set before the agents \
                 start, once every Sentinel sees it; restored at the heal), so Sentinel's failover aborts \
                 (-failover-abort-no-good-slave), as it did in the lab when such a partition lasted 30 s; no \
                 process is killed"
            }
        }
    }

    /// Where the row's recovery time counts from.
    pub fn recovery_from(self) -> RecoveryFrom {
        match self {
            // Nothing can move the HAVIP before the role credentials arrive.
            Row::MetadataDownAtStart => RecoveryFrom::Heal,
            // While the partition lasts writes must stay paused; recovery is what happens after it.
            Row::PartitionNoFailover => RecoveryFrom::Heal,
            _ => RecoveryFrom::Fault,
        }
    }

    /// How long the fault is held, given the default.
    pub fn hold(self, default: Duration) -> Duration {
        match self {
            // The failover abort (`-failover-abort-no-good-slave`) was seen with a 30 s partition.
            Row::PartitionNoFailover => default.max(Duration::from_secs(30)),
            _ => default,
        }
    }

    /// Whether the master's redis-server is SIGKILLed at the fault (and restarted at the heal).
    pub fn kills_master(self) -> bool {
        !matches!(
            self,
            Row::MetadataDownAtStart | Row::InterfaceDownUp | Row::PartitionNoFailover
        )
    }

    /// Whether the agents use the CAM role from a fake metadata service instead of keys.
    pub fn uses_role(self) -> bool {
        matches!(self, Row::MetadataDownAtStart | Row::MetadataDownAtRefresh)
    }

    /// The clock offset (seconds) the row applies at the fault, for the clock rows.
    pub fn clock_jump_s(self) -> Option<i64> {
        match self {
            Row::ClockAhead => Some(600),
            Row::ClockBehind => Some(-600),
            _ => None,
        }
    }

    /// The lab scenario the row's failover resembles (labels the per-run figures).
    pub fn base_scenario(self) -> Scenario {
        match self {
            Row::InterfaceDownUp | Row::MetadataDownAtStart => Scenario::LinkLoss,
            Row::PartitionNoFailover => Scenario::PartialPartition,
            Row::AgentKilledMidClaim => Scenario::ManagerRestart,
            Row::Api5xx | Row::ApiThrottle | Row::ApiTimeout | Row::ApiHang => {
                Scenario::CloudFaults
            }
            _ => Scenario::KillMaster,
        }
    }

    /// The API fault the row injects, if any.
    fn api_fault(self) -> Option<FaultKind> {
        match self {
            Row::Api5xx => Some(FaultKind::Http(503)),
            Row::ApiThrottle => Some(FaultKind::Throttle),
            Row::ApiTimeout => Some(FaultKind::Delay(Duration::from_secs(5))),
            Row::ApiHang => Some(FaultKind::Hang),
            _ => None,
        }
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.fault())
    }
}

/// When acknowledged writes flow again after `from`: the end of the last gap longer than [`FLOWING_GAP`]
/// between consecutive `acks` (sorted) that ends after `from`, or, when nothing was acknowledged before
/// `from` (writes never flowed), the first ack after it if that is later; `from` itself when writes flowed
/// through it without such a gap; `None` when nothing is acknowledged after `from`.
pub fn writes_back_at(acks: &[SystemTime], from: SystemTime) -> Option<SystemTime> {
    let first_after = acks.iter().copied().find(|t| *t >= from)?;
    let never_flowed = acks.first().is_none_or(|t| *t >= from);
    let last_gap_end = acks
        .windows(2)
        .filter(|w| w[1] > from && w[1].duration_since(w[0]).unwrap_or_default() > FLOWING_GAP)
        .map(|w| w[1])
        .max();
    let start = if never_flowed { first_after } else { from };
    Some(last_gap_end.map_or(start, |g| g.max(start)))
}

/// A row's recovery: from `from` (the fault or the heal) until the VIP is bound on exactly the final
/// Sentinel master for good and acknowledged writes that survive on it flow again ([`writes_back_at`]),
/// whichever is later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    /// Milliseconds from `from` to the later of the two.
    pub ms: f64,
    /// Milliseconds from `from` until the VIP sat on exactly the final master for good.
    pub vip_ms: f64,
    /// Milliseconds from `from` until surviving writes flowed again.
    pub writes_ms: f64,
}

fn ms_after(t: SystemTime, from: SystemTime) -> f64 {
    match t.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

/// The recovery of a run counted from `from` (see [`Recovery`]); `None` when the run did not recover: no
/// agreed final master, the VIP not on exactly it at the end, or no surviving write after `from`.
pub fn recovery(r: &Records, from: SystemTime) -> Option<Recovery> {
    let master = r.final_master?;
    let vip_at = exact_since(&r.vip_changes, master, from, r.end_at)?;
    let kept: std::collections::HashSet<u64> = r.final_list.iter().copied().collect();
    let mut surviving: Vec<SystemTime> = r
        .attempts
        .iter()
        .filter(|a| a.acked() && kept.contains(&a.seq))
        .map(|a| a.done)
        .collect();
    surviving.sort();
    let writes_at = writes_back_at(&surviving, from)?;
    let vip_ms = ms_after(vip_at, from).max(0.0);
    let writes_ms = ms_after(writes_at, from).max(0.0);
    Some(Recovery {
        ms: vip_ms.max(writes_ms),
        vip_ms,
        writes_ms,
    })
}

/// The figures of one row's run.
#[derive(Debug, Clone)]
pub struct RowReport {
    /// The row.
    pub row: Row,
    /// The lab's per-run figures (switch, outages, losses, two holders, VIP on master, signatures).
    pub run: RunReport,
    /// The VIP ended bound on exactly the final Sentinel master and the cloud's holder is its instance.
    pub ended_on_master: bool,
    /// The recovery, counted from [`Row::recovery_from`].
    pub recovery: Option<Recovery>,
    /// Acknowledged writes during the fault (after the fault instant, before the heal), and how many of them
    /// survive in the final master's list.
    pub acked_during: (usize, usize),
    /// What the run saw that explains the figures (API answers, Sentinel aborts, agent restarts...).
    pub observations: Vec<String>,
}

impl RowReport {
    /// Computes the row's figures from the run's records.
    pub fn from_records(row: Row, r: &Records, observations: Vec<String>) -> RowReport {
        let run = RunReport::from_records(r);
        let from = match row.recovery_from() {
            RecoveryFrom::Fault => r.fault_at,
            RecoveryFrom::Heal => r.heal_at,
        };
        let kept: std::collections::HashSet<u64> = r.final_list.iter().copied().collect();
        let during: Vec<&super::client::Attempt> = r
            .attempts
            .iter()
            .filter(|a| {
                a.acked()
                    && a.done > r.fault_done_at + super::report::UNSAVABLE_MARGIN
                    && a.done <= r.heal_at
            })
            .collect();
        let surviving = during.iter().filter(|a| kept.contains(&a.seq)).count();
        let ended = r
            .final_master
            .is_some_and(|m| exact_since(&r.vip_changes, m, r.heal_at, r.end_at).is_some());
        RowReport {
            row,
            ended_on_master: ended && run.cloud_holder_ok,
            recovery: recovery(r, from),
            acked_during: (during.len(), surviving),
            run,
            observations,
        }
    }

    /// One printed line.
    pub fn line(&self) -> String {
        format!(
            "row {:>2} {:<38} on master {:<3} two holders {:>6.0} ms  lost {:>5}  recovery {:>8} ms (from {})  acked in fault {}/{}",
            self.row.number(),
            self.row.fault(),
            if self.ended_on_master { "yes" } else { "NO" },
            self.run.two_holders_ms,
            self.run.lost.counted(),
            self.recovery
                .map_or("-".to_owned(), |r| format!("{:.0}", r.ms)),
            self.row.recovery_from(),
            self.acked_during.1,
            self.acked_during.0,
        )
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn med_range(v: Vec<f64>) -> String {
    let n = v.len();
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    match (median(v), lo, hi) {
        (Some(m), Some(lo), Some(hi)) if n > 1 => format!("{m:.0} ({lo:.0}..{hi:.0})"),
        (Some(m), _, _) => format!("{m:.0}"),
        _ => "-".into(),
    }
}

fn losses_text(l: &Losses) -> String {
    let mut s = format!(
        "{} ({} during, {} after the heal",
        l.counted(),
        l.during,
        l.after
    );
    if l.before > 0 {
        let _ = write!(s, ", {} before the fault", l.before);
    }
    if l.unsavable > 0 {
        let _ = write!(s, "; +{} unsavable", l.unsavable);
    }
    s.push(')');
    s
}

/// The matrix as a Markdown table, one line per row (runs of a row grouped: medians with the range, counts
/// summed), in row order. Rows that failed to run are listed by the caller.
pub fn matrix_markdown(reports: &[RowReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| # | fault | runs | VIP ended on the master | two hosts held the VIP (ms) | lost acknowledged writes | \
         recovery (ms) | counted from | Sentinel switch (ms) | acked during the fault (surviving / all) | \
         signatures valid | what the run saw |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in Row::ALL {
        let runs: Vec<&RowReport> = reports.iter().filter(|r| r.row == row).collect();
        if runs.is_empty() {
            continue;
        }
        let ok = runs.iter().filter(|r| r.ended_on_master).count();
        let lost = runs.iter().fold(Losses::default(), |mut acc, r| {
            acc.before += r.run.lost.before;
            acc.unsavable += r.run.lost.unsavable;
            acc.during += r.run.lost.during;
            acc.after += r.run.lost.after;
            acc
        });
        let recovered: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.recovery.map(|x| x.ms))
            .collect();
        let not_recovered = runs.len() - recovered.len();
        let mut rec = med_range(recovered);
        if not_recovered > 0 {
            let _ = write!(rec, "; {not_recovered} run(s) did not recover");
        }
        let switch: Vec<f64> = runs.iter().filter_map(|r| r.run.switch_ms).collect();
        let during: (usize, usize) = runs.iter().fold((0, 0), |a, r| {
            (a.0 + r.acked_during.1, a.1 + r.acked_during.0)
        });
        let reqs: usize = runs.iter().map(|r| r.run.api_requests).sum();
        let bad: usize = runs.iter().map(|r| r.run.bad_signatures).sum();
        let mut seen: Vec<String> = Vec::new();
        for r in &runs {
            for o in &r.observations {
                if !seen.contains(o) {
                    seen.push(o.clone());
                }
            }
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            row.number(),
            row.fault(),
            runs.len(),
            ok,
            runs.len(),
            med_range(runs.iter().map(|r| r.run.two_holders_ms).collect()),
            losses_text(&lost),
            rec,
            row.recovery_from(),
            if switch.is_empty() {
                "no switch".to_owned()
            } else {
                med_range(switch)
            },
            during.0,
            during.1,
            if reqs == 0 {
                "no API calls".to_owned()
            } else {
                format!("{}/{}", reqs - bad, reqs)
            },
            seen.join("; ").replace('|', "/"),
        );
    }
    out
}

/// Timings and binaries of a matrix run.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// Client writes before the fault.
    pub warmup: Duration,
    /// How long each fault is held (see [`Row::hold`] for the row that holds longer).
    pub hold: Duration,
    /// How long the client keeps writing after the heal.
    pub after_heal: Duration,
    /// Where the binaries are (the agent's is needed).
    pub binaries: Binaries,
    /// Keep each run's directory (configs, logs).
    pub keep_dir: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            hold: Duration::from_secs(10),
            after_heal: Duration::from_secs(10),
            binaries: Binaries::default(),
            keep_dir: std::env::var_os("LAB_KEEP").is_some(),
        }
    }
}

/// One row's run: its figures, the raw records and the logs.
#[derive(Debug)]
pub struct RowOutcome {
    /// The figures.
    pub report: RowReport,
    /// The raw records.
    pub records: Records,
    /// The agents' logs.
    pub manager_logs: String,
    /// The tails of the Redis and Sentinel logs.
    pub redis_logs: String,
}

/// An nftables table in one namespace, deleted on drop.
struct NftTable<'a> {
    ns: &'a Netns,
    family: &'static str,
    name: String,
}

impl<'a> NftTable<'a> {
    fn add(ns: &'a Netns, family: &'static str, name: &str, body: &str) -> Result<Self> {
        let rules = format!("table {family} {name} {{\n{body}\n}}\n");
        nft(ns, &["-f", "-"], Some(&rules))?;
        Ok(Self {
            ns,
            family,
            name: name.to_owned(),
        })
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = nft(self.ns, &["delete", "table", self.family, &self.name], None);
    }
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = ns.command("nft");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running nft (apt-get install nftables)")?;
    let mut input = child.stdin.take();
    if let (Some(text), Some(pipe)) = (stdin, input.as_mut()) {
        pipe.write_all(text.as_bytes())
            .context("writing nft rules")?;
    }
    drop(input);
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft {} in {} failed ({}): {}",
            args.join(" "),
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A directory made immutable (`chattr +i`: no entry can be created in it, even by root) after its
/// entries are removed, made mutable again on drop. A mount over it would not do: `ip netns exec` gives
/// each agent its own mount namespace, which a later mount in ours does not reach.
struct ImmutableDir {
    path: PathBuf,
}

impl ImmutableDir {
    fn make(path: &Path) -> Result<Self> {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let p = entry?.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .context("running chattr (e2fsprogs)")?;
        if !out.status.success() {
            bail!(
                "chattr +i {} failed (the file system must support the immutable flag): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for ImmutableDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.path)
            .status();
    }
}

/// A server on a Sentinel's address and port that answers every read with broken RESP (a bulk string with a
/// negative length other than -1, a wrong type marker, binary junk), until dropped.
struct GarbageServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the garbage server answers to every read.
pub const GARBAGE_REPLY: &[u8] =
    b"$-7\r\n*2\r\n:notanumber\r\n\xff\xfe\x00garbage\r\n%1\r\n+message\r\n$99999999999999999999\r\n";

impl GarbageServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let listener = ns
            .try_run(|| TcpListener::bind(addr))?
            .with_context(|| format!("binding the garbage server on {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-garbage-resp".into())
            .spawn(move || {
                let mut conns = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let flag = flag.clone();
                            conns.push(std::thread::spawn(move || {
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                                let mut buf = [0u8; 4096];
                                while !flag.load(Ordering::Relaxed) {
                                    match s.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(_) => {
                                            if s.write_all(GARBAGE_REPLY).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
            .context("spawning the garbage server")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets `replica-priority` on both replicas (nodes 1 and 2) and waits until every Sentinel reports it
/// (Sentinel reads it from the replicas' INFO, every 10 s when nothing is failing).
async fn set_replica_priority(redis: &RedisLab, priority: u32) -> Result<()> {
    let p = priority.to_string();
    for i in 1..HOST_IPS.len() {
        redis
            .redis_command(i, &["CONFIG", "SET", "replica-priority", &p])
            .await
            .with_context(|| format!("setting replica-priority on node {i}"))?;
    }
    if priority != 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for s in 0..HOST_IPS.len() {
            let v = redis
                .sentinel_command(s, &["SENTINEL", "REPLICAS", MASTER_NAME])
                .await?;
            let seen = replica_priorities(&v);
            all &= seen.len() == HOST_IPS.len() - 1
                && seen.iter().all(|x| x.as_deref() == Some(p.as_str()));
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Sentinels did not see replica-priority {p} on both replicas within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `slave-priority` field of every replica in a `SENTINEL REPLICAS` answer.
fn replica_priorities(v: &redis::Value) -> Vec<Option<String>> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let redis::Value::Array(replicas) = v else {
        return Vec::new();
    };
    replicas
        .iter()
        .map(|r| match r {
            redis::Value::Array(fields) => fields
                .chunks(2)
                .find(|kv| text(&kv[0]).as_deref() == Some("slave-priority"))
                .and_then(|kv| kv.get(1).and_then(text)),
            redis::Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some("slave-priority"))
                .and_then(|(_, v)| text(v)),
            _ => None,
        })
        .collect()
}

/// Makes the metadata service refuse every host's connections (TCP reset, as a service that is down).
fn block_metadata(topo: &Topology, port: Option<u16>) -> Result<Vec<NftTable<'_>>> {
    let port = port.context("no metadata service in this row")?;
    (0..HOST_IPS.len())
        .map(|i| {
            NftTable::add(
                &topo.host(i).ns,
                "inet",
                "hvfaultmd",
                &format!(
                    "  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
                     ip daddr {SWITCH_IP} tcp dport {port} reject with tcp reset\n  }}"
                ),
            )
        })
        .collect()
}

/// Writes the agent wrapper: a shell script that adjusts the environment (role credentials: no keys;
/// clock rows: libfaketime reading `offset_file`) and execs the real agent.
fn write_wrapper(path: &Path, agent: &Path, row: Row, offset_file: &Path) -> Result<()> {
    let mut text = String::from("#!/bin/sh\n# Written by the fault matrix (lab::faults).\n");
    if row.uses_role() {
        text.push_str("unset TENCENTCLOUD_SECRET_ID TENCENTCLOUD_SECRET_KEY TENCENTCLOUD_TOKEN\n");
    }
    if row.clock_jump_s().is_some() {
        let _ = writeln!(
            text,
            "export LD_PRELOAD='{LIBFAKETIME}' FAKETIME_TIMESTAMP_FILE='{}' FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1",
            offset_file.display()
        );
    }
    let _ = writeln!(text, "exec '{}' \"$@\"", agent.display());
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

const ROLE: &str = "havip-lab-role";
const ROLE_TMP_ID: &str = "AKIDhavipLabRole000000000000000000";
const ROLE_TMP_KEY: &str = "havipLabRoleTmpKey00000000000000";
const ROLE_TOKEN: &str = "havipLabRoleToken";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs one row of the matrix with the agent and returns its figures. Needs root; must run on a thread that
/// lives for the whole run (see `lab::scenario::run`).
pub async fn run_row(row: Row, opts: &FaultOptions) -> Result<RowOutcome> {
    let method = Method::Agent;
    require_tools(method)?;
    if row.clock_jump_s().is_some() && !Path::new(LIBFAKETIME).is_file() {
        bail!("row {row} needs libfaketime ({LIBFAKETIME}): apt-get install faketime");
    }
    let real_agent = opts
        .binaries
        .agent
        .clone()
        .context("the havip-agent binary was not given")?;
    let started = Instant::now();
    let hold = row.hold(opts.hold);
    let mut notes = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix(&format!("havip-faults-r{}-", row.number()))
        .tempdir()
        .context("creating the run's temp dir")?;
    let offset_file = dir.path().join("clock-offset");
    std::fs::write(&offset_file, "+0\n").context("writing the clock offset file")?;
    let wrapper = dir.path().join("agent-wrapper.sh");
    write_wrapper(&wrapper, &real_agent, row, &offset_file)?;

    // Drop order (reverse of declaration): guards, client, managers, observers, redis, metadata, topology.
    let topo = Topology::build("flt", method.drift_range()).await?;
    let fake = topo.fake().clone();
    let metadata = if row.uses_role() {
        let listener = topo
            .switch()
            .try_run(|| TcpListener::bind((SWITCH_IP, 0)))?
            .context("binding the fake metadata service")?;
        // The instance id and address are explicit in the config: only the role comes from here.
        let expires = unix_now() + 302;
        let spec = MetadataSpec::new(INSTANCE_IDS[0], HOST_IPS[0], topo.host(0).mac).with_role(
            RoleCredentials::new(ROLE, ROLE_TMP_ID, ROLE_TMP_KEY, ROLE_TOKEN, expires),
        );
        fake.add_temporary_key(ROLE_TMP_ID, ROLE_TMP_KEY, ROLE_TOKEN);
        Some(FakeMetadata::start_on(listener, spec).await)
    } else {
        None
    };
    let bins = Binaries {
        agent: Some(wrapper.clone()),
        migrate: opts.binaries.migrate.clone(),
    };
    let (mut managers, setup) = Managers::prepare(method, &topo, dir.path(), bins)?;
    let lock_dirs: Vec<PathBuf> = (0..HOST_IPS.len())
        .map(|i| dir.path().join(format!("host{}", i + 1)).join("lock"))
        .collect();
    if let Some(md) = &metadata {
        for i in 0..HOST_IPS.len() {
            let cfg = dir
                .path()
                .join(format!("host{}", i + 1))
                .join("havip-agent.toml");
            let text = std::fs::read_to_string(&cfg)?;
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("metadata_endpoint") {
                        format!("metadata_endpoint = \"{}\"", md.endpoint())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&cfg, text + "\n")?;
            havip_agent::config::Config::load(&cfg)
                .map_err(|e| anyhow::anyhow!("the row's agent config {}: {e}", cfg.display()))?;
        }
    }
    let md_port = metadata
        .as_ref()
        .and_then(|m| m.endpoint().split(':').nth(2).map(str::to_owned))
        .and_then(|s| s.split('/').next().and_then(|p| p.parse::<u16>().ok()));

    let redis = super::scenario::start_redis(&topo, &setup).await?;
    if row == Row::PartitionNoFailover {
        set_replica_priority(&redis, 0).await?;
    }
    let host_ns: Vec<&Netns> = (0..HOST_IPS.len()).map(|i| &topo.host(i).ns).collect();
    let vip_monitor = VipMonitor::start(&host_ns, Lab::HOST_IF, &vip_cidr())?;
    let sentinels: Vec<SocketAddr> = HOST_IPS
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(*ip), SENTINEL_PORT))
        .collect();
    let events = SentinelEvents::start(topo.switch(), sentinels)?;
    let old_master = 0;
    let key = format!("faults:{}", row.number());
    redis.redis_command(old_master, &["DEL", &key]).await?;
    let max_run = opts.warmup + hold + opts.after_heal + Duration::from_secs(120);
    let initial_state = |topo: &Topology| -> Result<bool> {
        let holders = vip_holders(topo)?;
        let cloud = fake.havip(HAVIP_ID).and_then(|h| h.instance_id);
        Ok(holders == vec![old_master]
            && cloud.as_deref() == Some(INSTANCE_IDS[old_master])
            && topo.data_path().current() == Some(old_master))
    };

    // Guards the heal releases (dropped in reverse order, also on error).
    let mut md_block: Vec<NftTable<'_>> = Vec::new();
    let mut stall: Option<NftTable<'_>> = None;
    let mut garbage: Option<GarbageServer> = None;
    let mut immutable: Vec<ImmutableDir> = Vec::new();
    let mut partition: Option<NftTable<'_>> = None;

    let client;
    let fault_at;
    let fault_done_at;
    let fault_instant;
    if row == Row::MetadataDownAtStart {
        // The fault is there before the agents start; the client writes from the start.
        md_block = block_metadata(&topo, md_port)?;
        client = Client::start(
            &topo.client().ns,
            ClientSpec::baseline(SocketAddr::new(IpAddr::V4(VIP), REDIS_PORT), &key, max_run),
        )?;
        tokio::time::sleep(opts.warmup).await;
        fault_at = SystemTime::now();
        managers.start(old_master).await?;
        fault_done_at = SystemTime::now();
        fault_instant = Instant::now();
    } else {
        managers.start(old_master).await?;
        let init = wait_for(
            "the VIP on host 1 only, the cloud holder ins-lab-1 and the client steered to host 1",
            Duration::from_secs(30),
            || initial_state(&topo),
        )
        .await;
        if let Err(e) = init {
            bail!(
                "{e:#}: holders {:?}, cloud {:?}\n{}",
                vip_holders(&topo).unwrap_or_default(),
                fake.havip(HAVIP_ID),
                managers.logs()
            );
        }
        notes.push(format!(
            "initial state after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        client = Client::start(
            &topo.client().ns,
            ClientSpec::baseline(SocketAddr::new(IpAddr::V4(VIP), REDIS_PORT), &key, max_run),
        )?;
        tokio::time::sleep(opts.warmup).await;

        // The fault.
        let d = DISTURBED_SENTINEL;
        let sentinel_addr = SocketAddr::new(IpAddr::V4(HOST_IPS[d]), SENTINEL_PORT);
        fault_at = SystemTime::now();
        if let Some(kind) = row.api_fault() {
            fake.inject(Fault::always(kind));
        }
        match row {
            Row::MetadataDownAtRefresh => md_block = block_metadata(&topo, md_port)?,
            Row::SentinelDown => redis.kill_sentinel(d),
            Row::SentinelStalled => {
                stall = Some(NftTable::add(
                    &topo.host(d).ns,
                    "inet",
                    "hvfaultstall",
                    &format!(
                        "  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
                         tcp dport {SENTINEL_PORT} drop\n  }}\n  chain output {{\n    type filter hook output \
                         priority 0; policy accept;\n    tcp sport {SENTINEL_PORT} drop\n  }}"
                    ),
                )?)
            }
            Row::SentinelGarbage => {
                redis.kill_sentinel(d);
                garbage = Some(GarbageServer::start(&topo.host(d).ns, sentinel_addr)?);
            }
            Row::InterfaceDownUp => topo.host(old_master).ns.link_set(Lab::HOST_IF, false)?,
            Row::LockDirMissing => {
                for l in &lock_dirs {
                    std::fs::remove_dir_all(l)
                        .with_context(|| format!("removing {}", l.display()))?;
                }
            }
            Row::LockDirUnwritable => {
                for l in &lock_dirs {
                    immutable.push(ImmutableDir::make(l)?);
                }
            }
            Row::ClockAhead | Row::ClockBehind => {
                let s = row.clock_jump_s().unwrap_or(0);
                std::fs::write(&offset_file, format!("{s:+}\n"))
                    .context("writing the clock offset file")?;
            }
            Row::PartitionNoFailover => {
                let me = topo.port_of(old_master);
                let others: Vec<String> = (0..HOST_IPS.len())
                    .filter(|i| *i != old_master)
                    .map(|i| format!("\"{}\"", topo.port_of(i)))
                    .collect();
                let others = others.join(", ");
                partition = Some(NftTable::add(
                    topo.switch(),
                    "bridge",
                    "hvfaultpart",
                    &format!(
                        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
                         iifname \"{me}\" oifname {{ {others} }} drop\n    iifname {{ {others} }} oifname \"{me}\" drop\n  }}"
                    ),
                )?);
            }
            _ => {}
        }
        if row.kills_master() {
            redis.kill_redis(old_master);
        }
        fault_done_at = SystemTime::now();
        fault_instant = Instant::now();

        if row == Row::AgentKilledMidClaim {
            let deadline = Instant::now() + hold;
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
                    seen.push(format!(
                        "killed host {}'s agent at +promoted-slave, {:.0} ms after the fault (running: {was_running})",
                        v + 1,
                        fault_instant.elapsed().as_secs_f64() * 1000.0
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    managers.restart(v)?;
                }
                None => seen.push("no +promoted-slave seen: nothing killed".into()),
            }
        }
    }

    // The heal.
    tokio::time::sleep(hold.saturating_sub(fault_instant.elapsed())).await;
    fake.clear_faults();
    drop(md_block);
    drop(stall);
    drop(partition);
    drop(immutable);
    if garbage.take().is_some() {
        redis.restart_sentinel(DISTURBED_SENTINEL).await?;
    }
    match row {
        Row::SentinelDown => redis.restart_sentinel(DISTURBED_SENTINEL).await?,
        Row::InterfaceDownUp => topo.host(old_master).ns.link_set(Lab::HOST_IF, true)?,
        _ => {}
    }
    if row.kills_master() {
        redis.restart_redis(old_master).await?;
    }
    if row == Row::PartitionNoFailover {
        set_replica_priority(&redis, 100).await?;
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
    if row == Row::MetadataDownAtStart {
        // The agents claim once the role credentials come; give them the usual 30 s for the initial state.
        let _ = wait_for(
            "the initial state after the heal",
            Duration::from_secs(30),
            || initial_state(&topo),
        )
        .await;
    }
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
            scenario: row.base_scenario(),
            fault_at,
            fault_done_at,
            heal_at,
            old_master,
            settled,
            move_delay: Duration::ZERO,
            notes,
        },
    )
    .await?;
    let manager_logs = managers.logs();
    seen.extend(observations(row, &records, &manager_logs));
    if let Some(md) = &metadata {
        seen.push(format!(
            "metadata role requests answered: {}",
            md.hits(&format!("cam/security-credentials/{ROLE}"))
        ));
    }
    let report = RowReport::from_records(row, &records, seen);
    let redis_logs = redis.logs_tail(40);
    drop(events);
    drop(vip_monitor);
    drop(managers);
    drop(redis);
    drop(metadata);
    drop(topo);
    if opts.keep_dir {
        let kept = dir.keep();
        let mut report = report;
        report
            .observations
            .push(format!("run dir kept: {}", kept.display()));
        return Ok(RowOutcome {
            report,
            records,
            manager_logs,
            redis_logs,
        });
    }
    Ok(RowOutcome {
        report,
        records,
        manager_logs,
        redis_logs,
    })
}

/// What a run saw that explains its figures: API answers by kind, Sentinel's failover aborts and repeats,
/// and agent log lines that matter for the row (counted, never quoted: logs could carry anything).
fn observations(row: Row, r: &Records, logs: &str) -> Vec<String> {
    let mut out = Vec::new();
    let after: Vec<&havip_testkit::fake::RecordedRequest> =
        r.requests.iter().filter(|q| q.at >= r.fault_at).collect();
    if !after.is_empty() {
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for q in &after {
            let k = match (&q.fault, &q.error_code) {
                (Some(FaultKind::Hang), _) => "hung".to_owned(),
                (Some(FaultKind::Delay(_)), _) => "late".to_owned(),
                (_, Some(code)) => code.clone(),
                _ if q.http_status != 200 => format!("HTTP {}", q.http_status),
                _ => "ok".to_owned(),
            };
            *kinds.entry(k).or_default() += 1;
        }
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!("API calls from the fault on: {}", list.join(", ")));
    }
    let aborts = r
        .events
        .iter()
        .filter(|e| e.at >= r.fault_at && e.channel.starts_with("-failover-abort"))
        .map(|e| e.channel.clone())
        .collect::<std::collections::BTreeSet<_>>();
    if !aborts.is_empty() {
        out.push(format!(
            "Sentinel: {}",
            aborts.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let switches = r
        .events
        .iter()
        .filter(|e| e.at >= r.fault_at && e.channel == "+switch-master")
        .count();
    if switches == 0 {
        out.push("Sentinel did not switch".into());
    }
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    match row {
        Row::LockDirMissing | Row::LockDirUnwritable => {
            let n = count("lock_dir");
            out.push(format!("agent log lines naming lock_dir: {n}"));
        }
        Row::MetadataDownAtStart => {
            let n = count("cam role credentials deferred");
            out.push(format!("agents that started with the role deferred: {n}"));
        }
        Row::MetadataDownAtRefresh => {
            let n = count("cannot refresh cam role credentials");
            out.push(format!(
                "failed refreshes that kept the current credentials: {n}"
            ));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::VipChange;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn rows_are_numbered_as_in_the_issue_and_round_trip() {
        assert_eq!(Row::ALL.len(), 16);
        for (i, r) in Row::ALL.into_iter().enumerate() {
            assert_eq!(r.number() as usize, i + 1);
            assert_eq!(Row::from_number(r.number()), Some(r));
        }
        assert_eq!(Row::from_number(0), None);
        assert_eq!(Row::from_number(17), None);
        assert_eq!(Row::Api5xx.number(), 1);
        assert_eq!(Row::PartitionNoFailover.number(), 16);
    }

    #[test]
    fn row_lists_parse_numbers_ranges_and_all() {
        assert_eq!(Row::parse_list("all").unwrap(), Row::ALL.to_vec());
        assert_eq!(Row::parse_list("").unwrap(), Row::ALL.to_vec());
        assert_eq!(
            Row::parse_list("1, 5-7,16").unwrap(),
            vec![
                Row::Api5xx,
                Row::MetadataDownAtStart,
                Row::MetadataDownAtRefresh,
                Row::SentinelDown,
                Row::PartitionNoFailover
            ]
        );
        let e = Row::parse_list("1,x").unwrap_err();
        assert!(e.contains("\"x\""), "{e}");
        let e = Row::parse_list("17").unwrap_err();
        assert!(e.contains("1..=16"), "{e}");
        let e = Row::parse_list("7-3").unwrap_err();
        assert!(e.contains("backwards"), "{e}");
    }

    #[test]
    fn only_blocking_faults_count_recovery_from_the_heal() {
        let from_heal: Vec<u8> = Row::ALL
            .into_iter()
            .filter(|r| r.recovery_from() == RecoveryFrom::Heal)
            .map(Row::number)
            .collect();
        assert_eq!(from_heal, vec![5, 16]);
        assert_eq!(
            Row::PartitionNoFailover.hold(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(
            Row::Api5xx.hold(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(Row::ClockBehind.clock_jump_s(), Some(-600));
    }

    #[test]
    fn writes_are_back_after_the_last_long_gap() {
        // Steady writes, a 3 s outage from 1000 to 4000, a short 50 ms hiccup later.
        let mut acks: Vec<SystemTime> = (0..500).map(|i| t(i * 2)).collect();
        acks.extend((0..500).map(|i| t(4000 + i * 2)));
        acks.push(t(5048));
        acks.push(t(5050));
        assert_eq!(writes_back_at(&acks, t(500)), Some(t(4000)));
        // Counted from after the outage: nothing long since, so writes were flowing at once.
        assert_eq!(writes_back_at(&acks, t(4500)), Some(t(4500)));
        // Nothing acknowledged after `from`: not back.
        assert_eq!(writes_back_at(&acks, t(6000)), None);
        // Nothing acknowledged before `from` (writes never flowed): back at the first ack.
        let late = [t(3000), t(3002), t(3004)];
        assert_eq!(writes_back_at(&late, t(1000)), Some(t(3000)));
        // A gap exactly at the limit is not an outage.
        let acks = [t(0), t(200), t(202)];
        assert_eq!(writes_back_at(&acks, t(0)), Some(t(0)));
    }

    fn records(attempts: Vec<crate::client::Attempt>, changes: Vec<VipChange>) -> Records {
        Records {
            method: Method::Agent,
            scenario: Scenario::KillMaster,
            fault_at: t(1000),
            fault_done_at: t(1000),
            heal_at: t(11000),
            end_at: t(21000),
            old_master: 0,
            final_master: Some(1),
            settled: true,
            final_list: attempts.iter().map(|a| a.seq).filter(|s| *s != 7).collect(),
            attempts,
            events: Vec::new(),
            garps: Vec::new(),
            moves: Vec::new(),
            move_delay: Duration::ZERO,
            steers: Vec::new(),
            requests: Vec::new(),
            cloud_holder: Some(INSTANCE_IDS[1].into()),
            vip_changes: changes,
            macs: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn acked(seq: u64, ms: u64) -> crate::client::Attempt {
        crate::client::Attempt {
            seq,
            sent: t(ms),
            done: t(ms),
            result: Ok(seq as i64),
        }
    }

    #[test]
    fn recovery_is_the_later_of_the_vip_settling_and_writes_flowing() {
        let c = |ms, host, bound| VipChange {
            at: t(ms),
            host,
            bound,
        };
        // Writes every 10 ms until the fault at 1000, back at 3500 on the new master.
        let mut attempts: Vec<_> = (0..100).map(|i| acked(i, i * 10)).collect();
        attempts.extend((0..100).map(|i| acked(1000 + i, 3500 + i * 10)));
        // Host 2 binds at 3400, host 1 lets go only at 4000: the VIP is on exactly the master from 4000.
        let changes = vec![c(0, 0, true), c(3400, 1, true), c(4000, 0, false)];
        let r = records(attempts.clone(), changes);
        let rec = recovery(&r, r.fault_at).expect("recovered");
        assert_eq!(
            (rec.vip_ms, rec.writes_ms, rec.ms),
            (3000.0, 2500.0, 3000.0)
        );
        // Counted from the heal (11000), both happened before it: recovered at once.
        let rec = recovery(&r, r.heal_at);
        assert_eq!(
            rec, None,
            "nothing acknowledged after the heal: not recovered"
        );
        // The VIP still on two hosts at the end: not recovered.
        let r = records(attempts, vec![c(0, 0, true), c(3400, 1, true)]);
        assert_eq!(recovery(&r, r.fault_at), None);
    }

    #[test]
    fn lost_writes_do_not_count_as_flowing() {
        // Seq 7 is acknowledged after the fault but missing from the final list (see `records`): a write
        // an isolated master took and lost does not end the outage.
        let c = |ms, host, bound| VipChange {
            at: t(ms),
            host,
            bound,
        };
        let mut attempts: Vec<_> = (0..5).map(|i| acked(i, 900 + i * 10)).collect();
        attempts.push(acked(7, 2000));
        attempts.extend((0..10).map(|i| acked(100 + i, 5000 + i * 10)));
        let r = records(attempts, vec![c(0, 1, true)]);
        let rec = recovery(&r, r.fault_at).expect("recovered");
        assert_eq!(rec.writes_ms, 4000.0);
    }

    #[test]
    fn replica_priorities_are_read_from_sentinel_replicas_answers() {
        use redis::Value;
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = Value::Array(vec![
            Value::Array(vec![
                b("name"),
                b("198.18.0.12:6379"),
                b("slave-priority"),
                b("0"),
            ]),
            Value::Array(vec![b("slave-priority"), b("100"), b("flags"), b("slave")]),
            Value::Array(vec![b("name"), b("no priority")]),
        ]);
        assert_eq!(
            replica_priorities(&answer),
            vec![Some("0".into()), Some("100".into()), None]
        );
        assert!(replica_priorities(&Value::Nil).is_empty());
    }

    #[test]
    fn the_matrix_has_one_line_per_row_in_row_order() {
        let report = |row: Row, two: f64| {
            let mut run = RunReport::from_records(&Records {
                method: Method::Agent,
                scenario: row.base_scenario(),
                fault_at: t(1000),
                fault_done_at: t(1000),
                heal_at: t(11000),
                end_at: t(21000),
                old_master: 0,
                final_master: Some(1),
                settled: true,
                attempts: Vec::new(),
                final_list: Vec::new(),
                events: Vec::new(),
                garps: Vec::new(),
                moves: Vec::new(),
                move_delay: Duration::ZERO,
                steers: Vec::new(),
                requests: Vec::new(),
                cloud_holder: Some(INSTANCE_IDS[1].into()),
                vip_changes: Vec::new(),
                macs: Vec::new(),
                notes: Vec::new(),
            });
            run.two_holders_ms = two;
            RowReport {
                row,
                run,
                ended_on_master: true,
                recovery: Some(Recovery {
                    ms: 2500.0,
                    vip_ms: 2400.0,
                    writes_ms: 2500.0,
                }),
                acked_during: (10, 10),
                observations: vec!["seen | once".into()],
            }
        };
        let md = matrix_markdown(&[
            report(Row::ClockAhead, 0.0),
            report(Row::Api5xx, 0.0),
            report(Row::Api5xx, 40.0),
        ]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(
            lines[2].starts_with("| 1 | API 5xx | 2 | 2/2 | 20 (0..40) |"),
            "{md}"
        );
        assert!(
            lines[3].starts_with("| 14 | clock jump +10 min | 1 |"),
            "{md}"
        );
        // Observations are listed once per row, and cannot break the table.
        assert!(lines[2].ends_with("| seen / once |"), "{md}");
    }
}
