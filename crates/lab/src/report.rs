//! What one lab run measured ([`RunReport`], computed from the raw [`Records`]) and the side-by-side
//! comparison of many runs ([`Comparison`]).
//!
//! Owns the definitions of every figure, so tests, the bench and BENCHMARKS.md agree:
//! - *switch*: first `+switch-master` from any Sentinel minus the fault instant;
//! - *outage*: the longest gap between consecutive acknowledged writes that ends after the fault and starts
//!   before the heal;
//! - *durable outage*: the same over the acknowledged writes that survived in the final master's list (a
//!   write acknowledged by an isolated old master and later wiped does not end an outage); *outage above
//!   switch*: the durable gap's end (the first surviving ack after it) minus the first `+switch-master`
//!   (negative when the client was back before Sentinel announced the switch). Without losses both gaps are
//!   the same; in a partial partition only the durable one shows when the client reached the new master;
//! - *outage above switch + delay*: the same end minus (the first `+switch-master` + the fake cloud's move
//!   delay): what a VIP manager adds on top of Sentinel and the platform (at or below 0: nothing);
//! - *post-heal outage*: the longest ack gap that ends after the heal;
//! - *GARP after switch*: the new master's first gratuitous ARP for the VIP after the fault, minus the first
//!   `+switch-master` (signed);
//! - *cloud move*: when the fake cloud moved the HAVIP to the new master's instance;
//! - *lost writes*: acknowledged sequence numbers missing from the final master's list, split by when they
//!   were acknowledged: before the fault, in the fault instant (±[`UNSAVABLE_MARGIN`] around the fault
//!   action: no VIP manager can save those, they were not replicated yet), during the fault, after the heal;
//! - *two holders*: total time two or more hosts had the VIP bound (and the part after the heal);
//! - *VIP on master*: from the heal on, the VIP ends up bound on exactly the final Sentinel master's host,
//!   and stays so, within 1 s of the heal;
//! - *signatures*: every API request the fake received had a valid TC3 signature.
//!
//! It does not run anything (see `lab::scenario`).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::client::Attempt;
use super::datapath::Steer;
use super::method::Method;
use super::observe::{SentinelEvent, VipChange};
use super::scenario::Scenario;
use super::topology::{INSTANCE_IDS, Topology, VIP};
use havip_testkit::fake::{GarpSeen, HolderMove, RecordedRequest};

/// Writes acknowledged this close to the fault action are counted as unsavable, not lost.
pub const UNSAVABLE_MARGIN: Duration = Duration::from_millis(10);
/// After the heal, the VIP must sit on exactly the master within this.
pub const VIP_SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// Everything one run recorded, raw.
#[derive(Debug, Clone)]
pub struct Records {
    /// The method.
    pub method: Method,
    /// The scenario.
    pub scenario: Scenario,
    /// Just before the fault action started.
    pub fault_at: SystemTime,
    /// Just after the fault action finished.
    pub fault_done_at: SystemTime,
    /// Just after the heal action finished.
    pub heal_at: SystemTime,
    /// When the run stopped recording.
    pub end_at: SystemTime,
    /// The master before the fault (node index).
    pub old_master: usize,
    /// The master the Sentinels agree on at the end, if they do.
    pub final_master: Option<usize>,
    /// Whether Sentinel settled (agreement, replicas in sync) after the heal.
    pub settled: bool,
    /// Every client attempt.
    pub attempts: Vec<Attempt>,
    /// The final master's list (sequence numbers).
    pub final_list: Vec<u64>,
    /// Every Sentinel event.
    pub events: Vec<SentinelEvent>,
    /// Every gratuitous ARP on the bridge.
    pub garps: Vec<GarpSeen>,
    /// The fake cloud's holder moves.
    pub moves: Vec<HolderMove>,
    /// The fake cloud's move delay in this run.
    pub move_delay: Duration,
    /// Rewrites of the client's data path (it follows the cloud's moves).
    pub steers: Vec<Steer>,
    /// The fake cloud's request log.
    pub requests: Vec<RecordedRequest>,
    /// The cloud holder at the end.
    pub cloud_holder: Option<String>,
    /// VIP binding changes per host.
    pub vip_changes: Vec<VipChange>,
    /// Hosts' MACs, node order.
    pub macs: Vec<[u8; 6]>,
    /// Free-form notes (what the scenario did, e.g. which agent it killed).
    pub notes: Vec<String>,
}

/// Lost acknowledged writes, by when they were acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// Acknowledged before the fault (should never be lost).
    pub before: usize,
    /// Acknowledged within [`UNSAVABLE_MARGIN`] of the fault action: not replicated yet, unsavable.
    pub unsavable: usize,
    /// Acknowledged during the fault (after the instant, up to the heal).
    pub during: usize,
    /// Acknowledged after the heal.
    pub after: usize,
}

impl Losses {
    /// Lost writes a VIP manager is accountable for: during and after the fault, plus before it.
    pub fn counted(&self) -> usize {
        self.before + self.during + self.after
    }
}

/// The figures of one run. Times are milliseconds.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The method.
    pub method: Method,
    /// The scenario.
    pub scenario: Scenario,
    /// The master before the fault.
    pub old_master: usize,
    /// The promoted master (from the first `+switch-master`), if any.
    pub new_master: Option<usize>,
    /// The master at the end.
    pub final_master: Option<usize>,
    /// Whether Sentinel settled after the heal.
    pub settled: bool,
    /// First `+switch-master` minus the fault.
    pub switch_ms: Option<f64>,
    /// First `+promoted-slave` minus the fault.
    pub promoted_ms: Option<f64>,
    /// Longest ack gap around the fault.
    pub outage_ms: Option<f64>,
    /// Longest gap between surviving acks around the fault.
    pub durable_outage_ms: Option<f64>,
    /// End of the durable gap minus the first `+switch-master` (signed).
    pub outage_above_switch_ms: Option<f64>,
    /// The fake cloud's move delay, ms.
    pub move_delay_ms: u64,
    /// End of the durable gap minus (the first `+switch-master` + the move delay) (signed).
    pub outage_above_switch_and_delay_ms: Option<f64>,
    /// Longest ack gap that ends after the heal.
    pub post_heal_outage_ms: Option<f64>,
    /// The new master's first GARP after the fault minus the first `+switch-master` (signed).
    pub garp_after_switch_ms: Option<f64>,
    /// The fake cloud's move to the new master minus the fault.
    pub cloud_move_ms: Option<f64>,
    /// The same move minus the first `+switch-master` (signed).
    pub cloud_move_after_switch_ms: Option<f64>,
    /// Attempts made.
    pub attempts: usize,
    /// Attempts acknowledged.
    pub acked: usize,
    /// Lost acknowledged writes.
    pub lost: Losses,
    /// Total time two or more hosts had the VIP bound.
    pub two_holders_ms: f64,
    /// The part of it after the heal.
    pub two_holders_after_heal_ms: f64,
    /// From the heal until the VIP was on exactly the final master for good (`None`: not at the end).
    pub vip_exact_after_heal_ms: Option<f64>,
    /// `vip_exact_after_heal_ms` within [`VIP_SETTLE_LIMIT`].
    pub vip_on_master: bool,
    /// The cloud holder at the end is the final master's instance.
    pub cloud_holder_ok: bool,
    /// API requests received by the fake.
    pub api_requests: usize,
    /// Of those, how many had an invalid signature.
    pub bad_signatures: usize,
    /// How many failovers Sentinel made after the fault (distinct epochs in `+new-epoch`). More than one
    /// means Sentinel itself failed over again (e.g. flagged the freshly promoted master down): writes the
    /// first promoted master acknowledged after that are lost whatever the VIP manager does.
    pub sentinel_failovers: usize,
    /// Notes from the run.
    pub notes: Vec<String>,
}

fn ms_between(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

/// The node a `+switch-master` payload names as new master.
fn switch_target(payload: &str) -> Option<usize> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    let ip: IpAddr = parts.get(3)?.parse().ok()?;
    Topology::node_of_ip(ip)
}

/// The node a `+promoted-slave` payload names (`slave <ip:port> <ip> <port> @ ...`).
pub fn promoted_target(payload: &str) -> Option<usize> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    let ip: IpAddr = parts.get(2)?.parse().ok()?;
    Topology::node_of_ip(ip)
}

/// Longest gap between consecutive times in `acks` (sorted) whose end is after `from` and whose start is
/// before `to`; returns (start, end).
fn longest_gap(
    acks: &[SystemTime],
    from: SystemTime,
    to: SystemTime,
) -> Option<(SystemTime, SystemTime)> {
    acks.windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .max_by_key(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .map(|w| (w[0], w[1]))
}

impl RunReport {
    /// Computes the figures from a run's records.
    pub fn from_records(r: &Records) -> RunReport {
        let after_fault = |t: SystemTime| t >= r.fault_at;
        let first_switch = r
            .events
            .iter()
            .filter(|e| e.channel == "+switch-master" && after_fault(e.at))
            .min_by_key(|e| e.at);
        let switch_at = first_switch.map(|e| e.at);
        let new_master = first_switch.and_then(|e| switch_target(&e.payload));
        let promoted_at = r
            .events
            .iter()
            .filter(|e| e.channel == "+promoted-slave" && after_fault(e.at))
            .map(|e| e.at)
            .min();

        let mut acks: Vec<SystemTime> = r
            .attempts
            .iter()
            .filter(|a| a.acked())
            .map(|a| a.done)
            .collect();
        acks.sort();
        let gap = longest_gap(&acks, r.fault_at, r.heal_at);
        let heal_gap = longest_gap(&acks, r.heal_at, r.end_at);
        let in_list: HashSet<u64> = r.final_list.iter().copied().collect();
        let mut surviving: Vec<SystemTime> = r
            .attempts
            .iter()
            .filter(|a| a.acked() && in_list.contains(&a.seq))
            .map(|a| a.done)
            .collect();
        surviving.sort();
        let durable_gap = longest_gap(&surviving, r.fault_at, r.heal_at);
        let mut notes = r.notes.clone();
        let host = |n: Option<usize>| n.map_or("none".to_owned(), |n| format!("host {}", n + 1));
        notes.push(format!(
            "masters: old host {}, promoted {}, final {}",
            r.old_master + 1,
            host(new_master),
            host(r.final_master)
        ));
        if switch_at.is_none() {
            notes.push("no +switch-master after the fault: Sentinel did not fail over".into());
        }
        let epochs: std::collections::BTreeSet<&str> = r
            .events
            .iter()
            .filter(|e| e.channel == "+new-epoch" && after_fault(e.at))
            .map(|e| e.payload.trim())
            .collect();
        if epochs.len() > 1 {
            notes.push(format!(
                "Sentinel failed over {} times (epochs {:?}): a second failover demotes a live master, and what \
                 it acknowledged meanwhile is lost whatever the VIP manager does",
                epochs.len(),
                epochs
            ));
        }
        for e in r.events.iter().filter(|e| e.channel == "+tilt") {
            notes.push(format!(
                "sentinel {} entered TILT {:.0} ms after the fault (its timer stalled: machine overloaded?)",
                e.sentinel + 1,
                ms_between(e.at, r.fault_at)
            ));
        }

        let garp_at = new_master.and_then(|n| {
            r.garps
                .iter()
                .filter(|g| g.ip == VIP && after_fault(g.at) && Some(&g.mac) == r.macs.get(n))
                .map(|g| g.at)
                .min()
        });
        let move_at = new_master.and_then(|n| {
            r.moves
                .iter()
                .filter(|m| after_fault(m.at) && m.to == INSTANCE_IDS[n])
                .map(|m| m.at)
                .min()
        });

        let mut lost = Losses::default();
        let instant_from = r.fault_at - UNSAVABLE_MARGIN;
        let instant_to = r.fault_done_at + UNSAVABLE_MARGIN;
        for a in r.attempts.iter().filter(|a| a.acked()) {
            if in_list.contains(&a.seq) {
                continue;
            }
            let t = a.done;
            if t < instant_from {
                lost.before += 1;
            } else if t <= instant_to {
                lost.unsavable += 1;
            } else if t <= r.heal_at {
                lost.during += 1;
            } else {
                lost.after += 1;
            }
        }

        let (two_holders, two_after_heal) = two_holder_time(&r.vip_changes, r.heal_at, r.end_at);
        let vip_exact = r
            .final_master
            .and_then(|m| exact_since(&r.vip_changes, m, r.heal_at, r.end_at));
        let vip_exact_ms = vip_exact.map(|t| ms_between(t, r.heal_at).max(0.0));

        RunReport {
            method: r.method,
            scenario: r.scenario,
            old_master: r.old_master,
            new_master,
            final_master: r.final_master,
            settled: r.settled,
            switch_ms: switch_at.map(|t| ms_between(t, r.fault_at)),
            promoted_ms: promoted_at.map(|t| ms_between(t, r.fault_at)),
            outage_ms: gap.map(|(a, b)| ms_between(b, a)),
            durable_outage_ms: durable_gap.map(|(a, b)| ms_between(b, a)),
            outage_above_switch_ms: match (durable_gap, switch_at) {
                (Some((_, end)), Some(s)) => Some(ms_between(end, s)),
                _ => None,
            },
            move_delay_ms: r.move_delay.as_millis() as u64,
            outage_above_switch_and_delay_ms: match (durable_gap, switch_at) {
                (Some((_, end)), Some(s)) => Some(ms_between(end, s + r.move_delay)),
                _ => None,
            },
            post_heal_outage_ms: heal_gap.map(|(a, b)| ms_between(b, a)),
            garp_after_switch_ms: match (garp_at, switch_at) {
                (Some(g), Some(s)) => Some(ms_between(g, s)),
                _ => None,
            },
            cloud_move_ms: move_at.map(|t| ms_between(t, r.fault_at)),
            cloud_move_after_switch_ms: match (move_at, switch_at) {
                (Some(m), Some(s)) => Some(ms_between(m, s)),
                _ => None,
            },
            attempts: r.attempts.len(),
            acked: acks.len(),
            lost,
            two_holders_ms: two_holders,
            two_holders_after_heal_ms: two_after_heal,
            vip_exact_after_heal_ms: vip_exact_ms,
            vip_on_master: vip_exact_ms
                .is_some_and(|ms| ms <= VIP_SETTLE_LIMIT.as_secs_f64() * 1000.0),
            cloud_holder_ok: r.final_master.is_some()
                && r.cloud_holder.as_deref() == r.final_master.map(|m| INSTANCE_IDS[m]),
            api_requests: r.requests.len(),
            bad_signatures: r.requests.iter().filter(|q| !q.signature_valid).count(),
            sentinel_failovers: epochs.len(),
            notes,
        }
    }

    /// The column names of [`RunReport::row`].
    pub fn header() -> String {
        format!(
            "{:<11} {:<2} {:>5} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>18} {:>7} {:>6} {:>5} {:>5}",
            "method",
            "sc",
            "delay",
            "switch",
            "promo",
            "outage",
            "durable",
            "ab.sw",
            "ab.sw+d",
            "garp",
            "cloud",
            "healout",
            "acked",
            "lost",
            "bef/inst/dur/aft",
            "2hold",
            "vip",
            "cloud",
            "sigs"
        )
    }

    /// One printed line: the method, the scenario and every figure (ms; `-` when absent).
    pub fn row(&self) -> String {
        let l = &self.lost;
        format!(
            "{:<11} {:<2} {:>5} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>18} {:>7} {:>6} {:>5} {:>5}",
            self.method.name(),
            self.scenario.number(),
            self.move_delay_ms,
            opt(self.switch_ms),
            opt(self.promoted_ms),
            opt(self.outage_ms),
            opt(self.durable_outage_ms),
            opt(self.outage_above_switch_ms),
            opt(self.outage_above_switch_and_delay_ms),
            opt(self.garp_after_switch_ms),
            opt(self.cloud_move_after_switch_ms),
            opt(self.post_heal_outage_ms),
            self.acked,
            l.counted(),
            format!("{}/{}/{}/{}", l.before, l.unsavable, l.during, l.after),
            format!("{:.0}", self.two_holders_ms),
            match (self.vip_on_master, self.vip_exact_after_heal_ms) {
                (true, _) => "ok".to_owned(),
                (false, Some(ms)) => format!("{:.0}", ms),
                (false, None) => "NO".to_owned(),
            },
            if self.cloud_holder_ok { "ok" } else { "NO" },
            if self.api_requests == 0 {
                "-".to_owned()
            } else if self.bad_signatures == 0 {
                "ok".to_owned()
            } else {
                format!("{}bad", self.bad_signatures)
            }
        )
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

/// Replays the VIP changes: the set of hosts bound at each moment.
fn timeline(changes: &[VipChange]) -> Vec<(SystemTime, Vec<bool>)> {
    let hosts = changes.iter().map(|c| c.host + 1).max().unwrap_or(0).max(3);
    let mut state = vec![false; hosts];
    let mut out = Vec::new();
    let mut sorted = changes.to_vec();
    sorted.sort_by_key(|c| c.at);
    for c in sorted {
        state[c.host] = c.bound;
        out.push((c.at, state.clone()));
    }
    out
}

fn two_holder_time(changes: &[VipChange], heal: SystemTime, end: SystemTime) -> (f64, f64) {
    let tl = timeline(changes);
    let mut total = 0.0;
    let mut after = 0.0;
    for (i, (t, state)) in tl.iter().enumerate() {
        if state.iter().filter(|b| **b).count() < 2 {
            continue;
        }
        let until = tl.get(i + 1).map(|(t, _)| *t).unwrap_or(end).min(end);
        total += ms_between(until, *t).max(0.0);
        let from = (*t).max(heal);
        if until > from {
            after += ms_between(until, from);
        }
    }
    (total, after)
}

/// The time from which the VIP is bound on exactly `master` until `end` (at or after `heal`), if it is so
/// at the end.
pub(crate) fn exact_since(
    changes: &[VipChange],
    master: usize,
    heal: SystemTime,
    end: SystemTime,
) -> Option<SystemTime> {
    let tl = timeline(changes);
    let exact = |s: &[bool]| s.iter().enumerate().all(|(i, b)| *b == (i == master));
    let last = tl.iter().rev().find(|(t, _)| *t <= end)?;
    if !exact(&last.1) {
        return None;
    }
    // Walk back to where the exact state began.
    let mut since = last.0;
    for (t, s) in tl.iter().rev().filter(|(t, _)| *t <= end) {
        if exact(s) {
            since = *t;
        } else {
            break;
        }
    }
    Some(since.max(heal))
}

/// Median of the present values.
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
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

fn range(values: &[Option<f64>]) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

fn med_range(values: &[Option<f64>]) -> String {
    match (median(values), range(values)) {
        (Some(m), Some((lo, hi))) if values.len() > 1 => format!("{m:.0} ({lo:.0}..{hi:.0})"),
        (Some(m), _) => format!("{m:.0}"),
        _ => "-".into(),
    }
}

/// Many runs side by side: per scenario, per cloud move delay, per method.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    runs: BTreeMap<(Scenario, u64, Method), Vec<RunReport>>,
}

impl Comparison {
    /// Groups the runs.
    pub fn new(runs: &[RunReport]) -> Comparison {
        let mut map: BTreeMap<(Scenario, u64, Method), Vec<RunReport>> = BTreeMap::new();
        for r in runs {
            map.entry((r.scenario, r.move_delay_ms, r.method))
                .or_default()
                .push(r.clone());
        }
        Comparison { runs: map }
    }

    /// The runs of one scenario, move delay (ms) and method.
    pub fn runs(&self, scenario: Scenario, move_delay_ms: u64, method: Method) -> &[RunReport] {
        self.runs
            .get(&(scenario, move_delay_ms, method))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The comparison as a Markdown table: medians (min..max) in ms, totals, and ratios against the seed
    /// script of the same scenario and move delay.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | cloud move delay | method | runs | Sentinel switch | client outage (acked) | outage of surviving writes | \
             outage above first +switch-master | outage above first +switch-master + delay | \
             GARP after it | cloud moved after it | post-heal outage | acked writes lost (during+after / acked; unsavable) | \
             lost vs seed | two hosts held the VIP | VIP on master ≤1 s after heal | cloud holder = master | signatures valid |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let groups: Vec<(Scenario, u64)> = {
            let mut s: Vec<(Scenario, u64)> = self.runs.keys().map(|(s, d, _)| (*s, *d)).collect();
            s.dedup();
            s
        };
        for (sc, delay) in groups {
            let seed_lost: Option<usize> = {
                let runs = self.runs(sc, delay, Method::SeedScript);
                (!runs.is_empty()).then(|| runs.iter().map(|r| r.lost.during + r.lost.after).sum())
            };
            for m in Method::ALL {
                let runs = self.runs(sc, delay, m);
                if runs.is_empty() {
                    continue;
                }
                let col = |f: &dyn Fn(&RunReport) -> Option<f64>| {
                    med_range(&runs.iter().map(f).collect::<Vec<_>>())
                };
                let lost: usize = runs.iter().map(|r| r.lost.during + r.lost.after).sum();
                let before: usize = runs.iter().map(|r| r.lost.before).sum();
                let unsavable: usize = runs.iter().map(|r| r.lost.unsavable).sum();
                let acked: usize = runs.iter().map(|r| r.acked).sum();
                let ratio = match seed_lost {
                    Some(0) if lost == 0 => "0 / 0".to_owned(),
                    Some(0) => "seed lost 0".to_owned(),
                    Some(s) => format!("{:.2}", lost as f64 / s as f64),
                    None => "-".to_owned(),
                };
                let vip_ok = runs.iter().filter(|r| r.vip_on_master).count();
                let cloud_ok = runs.iter().filter(|r| r.cloud_holder_ok).count();
                let reqs: usize = runs.iter().map(|r| r.api_requests).sum();
                let bad: usize = runs.iter().map(|r| r.bad_signatures).sum();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} / {} ({:.2} %); {} | {} | {} | {}/{} | {}/{} | {} |",
                    sc.number(),
                    delay,
                    m.name(),
                    runs.len(),
                    col(&|r| r.switch_ms),
                    col(&|r| r.outage_ms),
                    col(&|r| r.durable_outage_ms),
                    col(&|r| r.outage_above_switch_ms),
                    col(&|r| r.outage_above_switch_and_delay_ms),
                    col(&|r| r.garp_after_switch_ms),
                    col(&|r| r.cloud_move_after_switch_ms),
                    col(&|r| r.post_heal_outage_ms),
                    lost,
                    if before > 0 {
                        format!(" (+{before} acked before the fault)")
                    } else {
                        String::new()
                    },
                    acked,
                    if acked > 0 {
                        100.0 * lost as f64 / acked as f64
                    } else {
                        0.0
                    },
                    unsavable,
                    ratio,
                    col(&|r| Some(r.two_holders_ms)),
                    vip_ok,
                    runs.len(),
                    cloud_ok,
                    runs.len(),
                    if reqs == 0 {
                        "no API calls".to_owned()
                    } else {
                        format!("{}/{}", reqs - bad, reqs)
                    },
                );
            }
        }
        out
    }
}

/// The run as a readable timeline, milliseconds from the fault: Sentinel events, VIP bindings, GARPs, cloud
/// moves and API requests, and the client's ack gaps longer than 20 ms. For digging into a run.
pub fn timeline_text(r: &Records) -> String {
    let mut lines: Vec<(f64, String)> = Vec::new();
    let at = |t: SystemTime| ms_between(t, r.fault_at);
    for e in &r.events {
        lines.push((
            at(e.at),
            format!("sentinel {} {} {}", e.sentinel + 1, e.channel, e.payload),
        ));
    }
    for c in &r.vip_changes {
        lines.push((
            at(c.at),
            format!(
                "host {} vip {}",
                c.host + 1,
                if c.bound { "bound" } else { "removed" }
            ),
        ));
    }
    for g in &r.garps {
        let who = r
            .macs
            .iter()
            .position(|m| *m == g.mac)
            .map(|i| format!("host {}", i + 1))
            .unwrap_or_else(|| format!("{:02x?}", g.mac));
        lines.push((
            at(g.at),
            format!("garp {} op {} from {who}: {:?}", g.ip, g.op, g.outcome),
        ));
    }
    for m in &r.moves {
        lines.push((
            at(m.at),
            format!("cloud moved {} {:?} -> {}", m.havip_id, m.from, m.to),
        ));
    }
    for s in &r.steers {
        let to = s
            .node
            .map_or("nowhere".to_owned(), |n| format!("host {}", n + 1));
        lines.push((
            at(s.at),
            match &s.error {
                None => format!("client steered to {to}"),
                Some(e) => format!("client NOT steered to {to}: {e}"),
            },
        ));
    }
    for q in &r.requests {
        lines.push((
            at(q.at),
            format!(
                "api {} from {:?} status {} error {:?} signature {}",
                q.action,
                q.body.get("HaVipAssociationSet").map(|v| v.to_string()),
                q.http_status,
                q.error_code,
                if q.signature_valid { "ok" } else { "BAD" }
            ),
        ));
    }
    let mut last_ack: Option<SystemTime> = None;
    let mut first_err: Option<(SystemTime, String)> = None;
    for a in &r.attempts {
        match &a.result {
            Ok(_) => {
                if let Some(prev) = last_ack
                    && a.done.duration_since(prev).unwrap_or_default() > Duration::from_millis(20)
                {
                    lines.push((
                        at(prev),
                        format!(
                            "client: no ack for {:.0} ms (first error: {:?})",
                            ms_between(a.done, prev),
                            first_err.as_ref().map(|e| &e.1)
                        ),
                    ));
                }
                last_ack = Some(a.done);
                first_err = None;
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some((a.done, format!("{e:?}")));
                }
            }
        }
    }
    // Lost writes, as runs of consecutive attempts, with their ack times and replies (list lengths).
    let kept: HashSet<u64> = r.final_list.iter().copied().collect();
    let mut run: Option<(u64, SystemTime, i64, u64, SystemTime, i64, usize)> = None;
    let flush = |run: &mut Option<(u64, SystemTime, i64, u64, SystemTime, i64, usize)>,
                 lines: &mut Vec<(f64, String)>| {
        if let Some((s0, t0, l0, s1, t1, l1, n)) = run.take() {
            lines.push((
                at(t0),
                format!(
                    "LOST {n} acked writes: seq {s0}..={s1}, acked {:.1}..{:.1} ms, list length {l0}..{l1}",
                    at(t0),
                    at(t1)
                ),
            ));
        }
    };
    for a in &r.attempts {
        match a.result {
            Ok(len) if !kept.contains(&a.seq) => match run.as_mut() {
                Some(x) => {
                    x.3 = a.seq;
                    x.4 = a.done;
                    x.5 = len;
                    x.6 += 1;
                }
                None => run = Some((a.seq, a.done, len, a.seq, a.done, len, 1)),
            },
            Ok(_) => flush(&mut run, &mut lines),
            Err(_) => {}
        }
    }
    flush(&mut run, &mut lines);
    lines.push((0.0, "FAULT".into()));
    lines.push((at(r.fault_done_at), "fault action done".into()));
    lines.push((at(r.heal_at), "HEAL done".into()));
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = String::new();
    for (t, l) in lines {
        let _ = writeln!(out, "{t:>10.1} {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn longest_gap_only_counts_gaps_around_the_window() {
        let acks = [t(0), t(2), t(4), t(3000), t(3002), t(20000), t(29000)];
        assert_eq!(longest_gap(&acks, t(5), t(3001)), Some((t(4), t(3000))));
        // A gap that starts before the window ends counts, even when it runs past it.
        assert_eq!(
            longest_gap(&acks, t(5), t(10000)),
            Some((t(3002), t(20000)))
        );
        assert_eq!(
            longest_gap(&acks, t(10000), t(30000)),
            Some((t(3002), t(20000)))
        );
    }

    #[test]
    fn two_holder_time_sums_overlaps_and_the_part_after_the_heal() {
        let c = |ms, host, bound| VipChange {
            at: t(ms),
            host,
            bound,
        };
        let changes = [
            c(0, 0, true),
            c(100, 1, true),
            c(300, 0, false),
            c(1000, 0, true),
            c(1500, 0, false),
        ];
        let (total, after) = two_holder_time(&changes, t(1200), t(2000));
        assert_eq!(total, 200.0 + 500.0);
        assert_eq!(after, 300.0);
    }

    #[test]
    fn exact_since_finds_when_the_vip_settled_on_the_master() {
        let c = |ms, host, bound| VipChange {
            at: t(ms),
            host,
            bound,
        };
        let changes = [c(0, 0, true), c(100, 1, true), c(2000, 0, false)];
        assert_eq!(exact_since(&changes, 1, t(1000), t(3000)), Some(t(2000)));
        assert_eq!(exact_since(&changes, 1, t(2500), t(3000)), Some(t(2500)));
        assert_eq!(exact_since(&changes, 0, t(1000), t(3000)), None);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median(&[None]), None);
    }

    #[test]
    fn reads_the_new_master_from_event_payloads() {
        assert_eq!(
            switch_target("mymaster 198.18.0.11 6379 198.18.0.13 6379"),
            Some(2)
        );
        assert_eq!(
            promoted_target("slave 198.18.0.12:6379 198.18.0.12 6379 @ mymaster 198.18.0.11 6379"),
            Some(1)
        );
        assert_eq!(switch_target("garbage"), None);
    }
}
