//! The watcher's published view: what every configured Sentinel last said, and the rules that read it.
//!
//! Owns the pure reading rules, written once for the daemon, `migrate-havip`, `status` and `check`:
//! - *Membership*: a reachable Sentinel counts only if its peers list it (`SENTINEL SENTINELS`): one that
//!   answers for another deployment under the same master name is an outsider, reported but never counted.
//! - *Majority*: more than half of the configured Sentinels are reachable members.
//! - *Newest corroborated configuration*: the highest `config-epoch` among members, but only once it is
//!   corroborated: a second member reports the same configuration, or the named address itself answers
//!   `ROLE` as master. A newer configuration from a lone Sentinel is *pending* until then.
//! - *Agreed configuration*: the one a majority of the configured Sentinels reports (used to let a remembered
//!   configuration go).
//!
//! It does not talk to Sentinel (see [`super::watcher`] and [`super::probe`]) and does not decide what to do
//! (the reconciler does).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::MasterInfo;

/// One Sentinel configuration of a master: its address and the epoch that introduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MasterConfig {
    /// The master's IP as Sentinel reports it.
    pub ip: IpAddr,
    /// The master's port.
    pub port: u16,
    /// The `config-epoch` of that configuration.
    pub epoch: u64,
}

impl MasterConfig {
    /// The configuration a Sentinel's answer carries.
    pub fn of(m: &MasterInfo) -> Self {
        Self {
            ip: m.ip,
            port: m.port,
            epoch: m.config_epoch,
        }
    }

    /// The master's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// Everything the watcher knows at one moment. A new one is published whenever a Sentinel's reachability,
/// subscription or any of its [`MasterInfo`]s changes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The number of configured Sentinels (the majority is counted against this).
    pub total: usize,
    /// One entry per configured Sentinel, in config order.
    pub sentinels: Vec<SentinelState>,
    /// Increases by one with every published snapshot.
    pub seq: u64,
    /// When this snapshot was published.
    pub at: Instant,
}

/// What one Sentinel last said.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelState {
    /// The configured `host:port`.
    pub addr: String,
    /// Whether its command connection works: it answered its last command within the timeout.
    pub reachable: bool,
    /// Whether its Pub/Sub connection is subscribed (events are only wake-ups; polls work without it).
    pub subscribed: bool,
    /// When it last answered a command, as of this snapshot.
    pub last_ok: Option<Instant>,
    /// Its run id (`SENTINEL MYID`), when known.
    pub myid: Option<String>,
    /// Its answer per master name. Only masters it answered well for; empty while unreachable.
    pub masters: HashMap<String, MasterInfo>,
    /// Per master, when this Sentinel's (epoch, address) for it last changed: when it first showed the
    /// configuration it now holds.
    pub master_since: HashMap<String, Instant>,
    /// Per master: the address this Sentinel reports answered `ROLE` as master, for the configuration it
    /// reports now (cleared when that configuration changes).
    pub role_confirmed: HashMap<String, bool>,
    /// Why it is unreachable, or what was wrong with its last answers (`mymaster: ...`).
    pub error: Option<String>,
}

impl SentinelState {
    /// A Sentinel not heard from yet.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            reachable: false,
            subscribed: false,
            last_ok: None,
            myid: None,
            masters: HashMap::new(),
            master_since: HashMap::new(),
            role_confirmed: HashMap::new(),
            error: Some("not connected yet".into()),
        }
    }

    /// Whether an entry of `SENTINEL SENTINELS` names this Sentinel: by run id, or by the configured address.
    fn is_listed_as(&self, p: &super::PeerSentinel) -> bool {
        self.myid.as_deref() == Some(p.runid.as_str())
            || self.addr.parse::<SocketAddr>().ok() == Some(SocketAddr::new(p.ip, p.port))
    }
}

/// How a configuration came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corroboration {
    /// At least two member Sentinels report it.
    Peers,
    /// One member reports it and the named address answers `ROLE` as master.
    Role,
    /// The deployment has a single configured Sentinel: there is nobody else to ask.
    Alone,
}

/// The newest configuration of one master: see [`MasterView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    /// The master's address in that configuration.
    pub ip: IpAddr,
    /// The master's port.
    pub port: u16,
    /// The configuration epoch.
    pub epoch: u64,
    /// The Sentinels (configured `host:port`, config order) that report exactly this configuration.
    pub reported_by: Vec<String>,
    /// When the first of them started reporting it (as far as this watcher saw).
    pub first_seen: Option<Instant>,
    /// Why it is trusted; `None` for a pending (uncorroborated) configuration.
    pub corroboration: Option<Corroboration>,
}

impl Newest {
    /// The address as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The configuration.
    pub fn config(&self) -> MasterConfig {
        MasterConfig {
            ip: self.ip,
            port: self.port,
            epoch: self.epoch,
        }
    }
}

/// What the Sentinels say about one master, read with the rules in the module docs. The one input every
/// front door decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    /// Configured Sentinels.
    pub total: usize,
    /// Reachable Sentinels that count (members of this deployment).
    pub members: usize,
    /// More than half of the configured Sentinels are reachable members.
    pub majority: bool,
    /// The newest corroborated configuration.
    pub newest: Option<Newest>,
    /// A newer configuration than `newest` that no second member and no `ROLE` has corroborated yet.
    pub pending: Option<Newest>,
    /// The configuration a majority of the configured Sentinels reports, if one does.
    pub agreed: Option<MasterConfig>,
    /// Reachable Sentinels (configured `host:port`) that their peers do not list: they answer, but for
    /// another deployment (or a spoofer), so they neither count nor name the master.
    pub outsiders: Vec<String>,
    /// While the majority is out of sight: for how long, when the watcher saw it last (`None` while it is in
    /// sight, or when it was never seen).
    pub cut_off_for: Option<Duration>,
    /// The smallest `down-after-milliseconds` a member reports.
    pub down_after: Option<Duration>,
}

impl Snapshot {
    /// A snapshot with nothing heard yet from `addrs`.
    pub fn empty(addrs: &[String]) -> Self {
        Self {
            total: addrs.len(),
            sentinels: addrs.iter().map(SentinelState::new).collect(),
            seq: 0,
            at: Instant::now(),
        }
    }

    /// How many Sentinels answer (members or not): for display. Decisions use [`Snapshot::view`].
    pub fn reachable(&self) -> usize {
        self.sentinels.iter().filter(|s| s.reachable).count()
    }

    /// Whether Sentinel `idx` counts for `master`: it is reachable, and some other reachable Sentinel that
    /// lists peers for `master` lists it (by run id or by address). Sentinels that have not found each other
    /// yet (every list empty) all count, so a deployment that just started is not cut off; so does one that
    /// cannot be recognised at all (no run id and a host name configured).
    pub fn is_member(&self, idx: usize, master: &str) -> bool {
        let Some(me) = self.sentinels.get(idx).filter(|s| s.reachable) else {
            return false;
        };
        let mut vouchers = self
            .sentinels
            .iter()
            .enumerate()
            .filter(|(j, s)| *j != idx && s.reachable)
            .filter_map(|(_, s)| s.masters.get(master)?.peers.as_ref())
            .filter(|peers| !peers.is_empty())
            .peekable();
        // Nobody lists peers yet, or this Sentinel cannot be recognised in a list (no run id, because its ACL
        // denies `SENTINEL MYID`, and a host name rather than an address configured): it counts. Excluding it
        // would make a healthy master fence itself over an ACL detail.
        let recognisable = me.myid.is_some() || me.addr.parse::<SocketAddr>().is_ok();
        if vouchers.peek().is_none() || !recognisable {
            return true;
        }
        vouchers.any(|peers| peers.iter().any(|p| me.is_listed_as(p)))
    }

    /// Reachable Sentinels that are not members for at least one master they answer about.
    pub fn outsiders(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .enumerate()
            .filter(|(i, s)| s.reachable && s.masters.keys().any(|m| !self.is_member(*i, m)))
            .map(|(_, s)| s.addr.clone())
            .collect()
    }

    /// Whether more than half of the configured Sentinels are reachable and none of those counted is an
    /// outsider for any master. Per master, [`Snapshot::view`] is what decides.
    pub fn has_majority(&self) -> bool {
        let outsiders = self.outsiders();
        let members = self
            .sentinels
            .iter()
            .filter(|s| s.reachable && !outsiders.contains(&s.addr))
            .count();
        members > self.total / 2
    }

    /// The newest corroborated configuration of `master` ([`MasterView::newest`]).
    pub fn newest(&self, master: &str) -> Option<Newest> {
        self.view(master, self.at).newest
    }

    /// Reads the snapshot for `master` at `now` (see the module docs for the rules).
    pub fn view(&self, master: &str, now: Instant) -> MasterView {
        let member: Vec<bool> = (0..self.sentinels.len())
            .map(|i| self.is_member(i, master))
            .collect();
        let members = member.iter().filter(|m| **m).count();
        let majority = members > self.total / 2;
        let configs = self.configs(master, &member);
        let top_epoch = configs.first().map(|(c, _)| c.epoch);
        let corroborated = |who: &[usize], c: MasterConfig| -> Option<Corroboration> {
            if who.len() >= 2 {
                Some(Corroboration::Peers)
            } else if self.total == 1 {
                Some(Corroboration::Alone)
            } else if Some(c.epoch) == top_epoch
                && who.iter().any(|i| {
                    let s = &self.sentinels[*i];
                    s.role_confirmed.get(master) == Some(&true)
                        && s.masters.get(master).map(MasterConfig::of) == Some(c)
                })
            {
                // ROLE only vouches for the newest epoch a member reports: an old master still says
                // `master` after it was replaced.
                Some(Corroboration::Role)
            } else {
                None
            }
        };
        let mut newest = None;
        let mut pending = None;
        for (c, who) in &configs {
            match corroborated(who, *c) {
                Some(how) => {
                    newest = Some(self.describe(master, *c, who, Some(how)));
                    break;
                }
                None if pending.is_none() => {
                    pending = Some(self.describe(master, *c, who, None));
                }
                None => {}
            }
        }
        let agreed = configs
            .iter()
            .find(|(_, who)| who.len() > self.total / 2)
            .map(|(c, _)| *c);
        let outsiders = self
            .sentinels
            .iter()
            .zip(&member)
            .filter(|(s, m)| s.reachable && !**m)
            .map(|(s, _)| s.addr.clone())
            .collect();
        MasterView {
            total: self.total,
            members,
            majority,
            newest,
            pending,
            agreed,
            outsiders,
            cut_off_for: if majority {
                None
            } else {
                self.majority_last_seen(&member, now)
                    .map(|t| now.saturating_duration_since(t))
            },
            down_after: self
                .sentinels
                .iter()
                .zip(&member)
                .filter(|(_, m)| **m)
                .filter_map(|(s, _)| s.masters.get(master))
                .map(|m| m.down_after)
                .min(),
        }
    }

    /// Every configuration members report for `master`, with the reporting Sentinels' indices, best first:
    /// highest epoch, then more reporters, then the lowest address (two addresses with one epoch are not
    /// expected from Sentinel; the order only has to be deterministic).
    fn configs(&self, master: &str, member: &[bool]) -> Vec<(MasterConfig, Vec<usize>)> {
        let mut configs: Vec<(MasterConfig, Vec<usize>)> = Vec::new();
        for (i, s) in self.sentinels.iter().enumerate() {
            let Some(m) = s.masters.get(master).filter(|_| member[i]) else {
                continue;
            };
            let c = MasterConfig::of(m);
            match configs.iter_mut().find(|(k, _)| *k == c) {
                Some((_, who)) => who.push(i),
                None => configs.push((c, vec![i])),
            }
        }
        configs.sort_by(|(a, wa), (b, wb)| {
            b.epoch
                .cmp(&a.epoch)
                .then(wb.len().cmp(&wa.len()))
                .then((a.ip, a.port).cmp(&(b.ip, b.port)))
        });
        configs
    }

    fn describe(
        &self,
        master: &str,
        c: MasterConfig,
        who: &[usize],
        corroboration: Option<Corroboration>,
    ) -> Newest {
        Newest {
            ip: c.ip,
            port: c.port,
            epoch: c.epoch,
            reported_by: who
                .iter()
                .map(|i| self.sentinels[*i].addr.clone())
                .collect(),
            first_seen: who
                .iter()
                .filter_map(|i| self.sentinels[*i].master_since.get(master).copied())
                .min(),
            corroboration,
        }
    }

    /// The moment a majority of members was last in sight: the (n/2+1)-th most recent answer among
    /// members, counting reachable members as answering now. `None` if a majority was never seen.
    fn majority_last_seen(&self, member: &[bool], now: Instant) -> Option<Instant> {
        let mut seen: Vec<Option<Instant>> = self
            .sentinels
            .iter()
            .zip(member)
            .map(|(s, m)| match (m, s.reachable) {
                (true, _) => Some(now),
                // An outsider's answers say nothing about this deployment.
                (false, true) => None,
                (false, false) => s.last_ok,
            })
            .collect();
        seen.sort_unstable_by(|a, b| b.cmp(a));
        seen.get(self.total / 2).copied().flatten()
    }

    /// Whether the watcher should ask `ROLE` at the address Sentinel `idx` reports for `master`: it is a
    /// member, no other member reports the same configuration, and `ROLE` has not confirmed it yet.
    pub fn needs_role_check(&self, idx: usize, master: &str) -> Option<SocketAddr> {
        let s = self.sentinels.get(idx)?;
        let mine = MasterConfig::of(s.masters.get(master)?);
        if self.total <= 1
            || s.role_confirmed.get(master) == Some(&true)
            || !self.is_member(idx, master)
        {
            return None;
        }
        let others: Vec<MasterConfig> = self
            .sentinels
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != idx && o.reachable && self.is_member(*j, master))
            .filter_map(|(_, o)| o.masters.get(master).map(MasterConfig::of))
            .collect();
        let shared = others.contains(&mine);
        let outdated = others.iter().any(|o| o.epoch > mine.epoch);
        (!shared && !outdated).then(|| mine.addr())
    }

    /// The state of the Sentinel configured as `addr`.
    pub fn sentinel(&self, addr: &str) -> Option<&SentinelState> {
        self.sentinels.iter().find(|s| s.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentinel::PeerSentinel;

    fn info(epoch: u64, ip: &str, down_ms: u64) -> MasterInfo {
        MasterInfo {
            name: "m".into(),
            ip: ip.parse().unwrap(),
            port: 6379,
            config_epoch: epoch,
            flags: vec!["master".into()],
            down_after: Duration::from_millis(down_ms),
            failover_in_progress: false,
            num_other_sentinels: 2,
            quorum: 2,
            peers: None,
        }
    }

    /// One Sentinel in a table.
    #[derive(Clone, Copy)]
    struct S<'a> {
        reachable: bool,
        /// (epoch, ip) it reports for master `m`.
        reports: Option<(u64, &'a str)>,
        /// Indices of the Sentinels it lists in `SENTINEL SENTINELS m` (None: that answer failed).
        lists: Option<&'a [usize]>,
        /// `ROLE` at its reported address said master.
        role: bool,
    }

    const UP: S = S {
        reachable: true,
        reports: None,
        lists: None,
        role: false,
    };
    const DOWN: S = S {
        reachable: false,
        ..UP
    };

    fn addr(i: usize) -> String {
        format!("198.18.1.{}:26379", i + 1)
    }

    fn snap(states: &[S]) -> Snapshot {
        let addrs: Vec<String> = (0..states.len()).map(addr).collect();
        let mut s = Snapshot::empty(&addrs);
        let t0 = Instant::now();
        for (i, st) in states.iter().enumerate() {
            let out = &mut s.sentinels[i];
            out.reachable = st.reachable;
            out.myid = Some(format!("{i:040}"));
            if let Some((epoch, ip)) = st.reports {
                let mut m = info(epoch, ip, 1000 + i as u64);
                m.peers = st.lists.map(|l| {
                    l.iter()
                        .map(|j| PeerSentinel {
                            ip: "203.0.113.1".parse().unwrap(),
                            port: 1,
                            runid: format!("{j:040}"),
                        })
                        .collect()
                });
                out.masters.insert("m".into(), m);
                out.master_since
                    .insert("m".into(), t0 + Duration::from_millis(10 * i as u64));
                out.role_confirmed.insert("m".into(), st.role);
            }
        }
        s
    }

    fn at(epoch: u64, ip: &str) -> S<'_> {
        S {
            reports: Some((epoch, ip)),
            ..UP
        }
    }

    #[test]
    fn majority_is_more_than_half_of_the_configured_sentinels() {
        let cases: &[(&[bool], usize, bool)] = &[
            (&[true, true, true], 3, true),
            (&[true, true, false], 2, true),
            (&[true, false, false], 1, false),
            (&[false, false, false], 0, false),
            (&[true, true, false, false], 2, false),
            (&[true, true, true, false], 3, true),
            (&[true], 1, true),
            (&[], 0, false),
        ];
        for (reach, want_n, want_majority) in cases {
            let states: Vec<S> = reach
                .iter()
                .map(|r| if *r { at(1, "198.18.0.1") } else { DOWN })
                .collect();
            let s = snap(&states);
            let v = s.view("m", Instant::now());
            assert_eq!(v.members, *want_n, "{reach:?}");
            assert_eq!(v.majority, *want_majority, "{reach:?}");
            assert_eq!(s.has_majority(), *want_majority, "{reach:?}");
        }
    }

    struct NewestCase<'a> {
        label: &'a str,
        sentinels: Vec<S<'a>>,
        /// (epoch, ip, reporters) of the newest corroborated configuration.
        newest: Option<(u64, &'a str, Vec<usize>)>,
        /// (epoch, ip) of a newer configuration still waiting for corroboration.
        pending: Option<(u64, &'a str)>,
        /// (epoch, ip) a majority reports.
        agreed: Option<(u64, &'a str)>,
    }

    #[test]
    fn newest_is_the_highest_corroborated_epoch_among_members() {
        let lone_leader = S {
            reports: Some((2, "198.18.0.2")),
            ..UP
        };
        let cases = vec![
            NewestCase {
                label: "all agree",
                sentinels: vec![at(1, "198.18.0.1"); 3],
                newest: Some((1, "198.18.0.1", vec![0, 1, 2])),
                pending: None,
                agreed: Some((1, "198.18.0.1")),
            },
            NewestCase {
                label: "a lone leader ahead waits for corroboration",
                sentinels: vec![lone_leader, at(1, "198.18.0.1"), at(1, "198.18.0.1")],
                newest: Some((1, "198.18.0.1", vec![1, 2])),
                pending: Some((2, "198.18.0.2")),
                agreed: Some((1, "198.18.0.1")),
            },
            NewestCase {
                label: "ROLE at the promoted address corroborates the lone leader",
                sentinels: vec![
                    S {
                        role: true,
                        ..lone_leader
                    },
                    at(1, "198.18.0.1"),
                    at(1, "198.18.0.1"),
                ],
                newest: Some((2, "198.18.0.2", vec![0])),
                pending: None,
                agreed: Some((1, "198.18.0.1")),
            },
            NewestCase {
                label: "ROLE never vouches for an older epoch (an old master still says master)",
                sentinels: vec![
                    S {
                        role: true,
                        ..at(1, "198.18.0.1")
                    },
                    at(2, "198.18.0.2"),
                    DOWN,
                ],
                newest: None,
                pending: Some((2, "198.18.0.2")),
                agreed: None,
            },
            NewestCase {
                label: "a second sentinel corroborates",
                sentinels: vec![lone_leader, lone_leader, at(1, "198.18.0.1")],
                newest: Some((2, "198.18.0.2", vec![0, 1])),
                pending: None,
                agreed: Some((2, "198.18.0.2")),
            },
            NewestCase {
                label: "an unreachable sentinel's newer epoch is ignored",
                sentinels: vec![
                    S {
                        reachable: false,
                        ..at(5, "198.18.0.9")
                    },
                    at(1, "198.18.0.1"),
                    at(1, "198.18.0.1"),
                ],
                newest: Some((1, "198.18.0.1", vec![1, 2])),
                pending: None,
                agreed: Some((1, "198.18.0.1")),
            },
            NewestCase {
                label: "an outsider (listed by no peer) never names the master, even with ROLE",
                sentinels: vec![
                    S {
                        lists: Some(&[1]),
                        ..at(1, "198.18.0.1")
                    },
                    S {
                        lists: Some(&[0]),
                        ..at(1, "198.18.0.1")
                    },
                    S {
                        lists: Some(&[]),
                        role: true,
                        ..at(999_999, "198.18.0.77")
                    },
                ],
                newest: Some((1, "198.18.0.1", vec![0, 1])),
                pending: None,
                agreed: Some((1, "198.18.0.1")),
            },
            NewestCase {
                label: "same epoch, two addresses: more reporters win",
                sentinels: vec![
                    at(3, "198.18.0.1"),
                    at(3, "198.18.0.2"),
                    at(3, "198.18.0.2"),
                ],
                newest: Some((3, "198.18.0.2", vec![1, 2])),
                pending: None,
                agreed: Some((3, "198.18.0.2")),
            },
            NewestCase {
                label: "no sentinel knows the master",
                sentinels: vec![UP, UP, DOWN],
                newest: None,
                pending: None,
                agreed: None,
            },
            NewestCase {
                label: "a single configured sentinel is alone",
                sentinels: vec![at(4, "198.18.0.4")],
                newest: Some((4, "198.18.0.4", vec![0])),
                pending: None,
                agreed: Some((4, "198.18.0.4")),
            },
        ];
        for c in cases {
            let s = snap(&c.sentinels);
            let v = s.view("m", Instant::now());
            let got = v
                .newest
                .as_ref()
                .map(|n| (n.epoch, n.ip, n.reported_by.clone()));
            let want = c.newest.as_ref().map(|(e, ip, who)| {
                (
                    *e,
                    ip.parse::<IpAddr>().unwrap(),
                    who.iter().map(|i| addr(*i)).collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, want, "{}: newest", c.label);
            let ep = |x: Option<(u64, &str)>| x.map(|(e, ip)| (e, ip.parse::<IpAddr>().unwrap()));
            assert_eq!(
                v.pending.as_ref().map(|n| (n.epoch, n.ip)),
                ep(c.pending),
                "{}: pending",
                c.label
            );
            assert_eq!(
                v.agreed.map(|a| (a.epoch, a.ip)),
                ep(c.agreed),
                "{}: agreed",
                c.label
            );
            assert_eq!(s.view("other", Instant::now()).newest, None, "{}", c.label);
        }
    }

    #[test]
    fn outsiders_do_not_count_toward_the_majority_and_are_named() {
        let ours = |lists: &'static [usize]| S {
            lists: Some(lists),
            ..at(1, "198.18.0.1")
        };
        let foreign = S {
            lists: Some(&[]),
            ..at(999_999, "198.18.0.77")
        };
        let s = snap(&[ours(&[1]), ours(&[0]), foreign]);
        let v = s.view("m", Instant::now());
        assert_eq!((v.members, v.majority), (2, true));
        assert_eq!(v.outsiders, vec![addr(2)]);
        assert_eq!(s.outsiders(), vec![addr(2)]);
        // With one of ours down, the outsider does not make up a majority.
        let s = snap(&[DOWN, ours(&[0]), foreign]);
        let v = s.view("m", Instant::now());
        assert!(!v.majority, "{v:?}");
        // A Sentinel configured by host name whose run id is unknown cannot be recognised: it counts.
        let mut s = snap(&[ours(&[1]), ours(&[0]), foreign]);
        s.sentinels[2].addr = "sentinel-c.internal:26379".into();
        s.sentinels[2].myid = None;
        assert_eq!(s.view("m", Instant::now()).members, 3);
        // Sentinels that have not found each other yet (empty lists) all count.
        let s = snap(&[ours(&[]), ours(&[]), ours(&[])]);
        assert_eq!(s.view("m", Instant::now()).members, 3);
    }

    #[test]
    fn role_is_asked_only_for_a_lone_members_configuration() {
        let s = snap(&[
            at(2, "198.18.0.2"),
            at(1, "198.18.0.1"),
            at(1, "198.18.0.1"),
        ]);
        assert_eq!(
            s.needs_role_check(0, "m"),
            Some("198.18.0.2:6379".parse().unwrap())
        );
        assert_eq!(s.needs_role_check(1, "m"), None, "shared with sentinel 2");
        let confirmed = snap(&[
            S {
                role: true,
                ..at(2, "198.18.0.2")
            },
            at(1, "198.18.0.1"),
            at(1, "198.18.0.1"),
        ]);
        assert_eq!(confirmed.needs_role_check(0, "m"), None);
    }

    #[test]
    fn cut_off_for_counts_from_the_last_moment_a_majority_answered() {
        let mut s = snap(&[at(1, "198.18.0.1"), DOWN, DOWN]);
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(s.view("m", now).cut_off_for, None, "never seen");
        s.sentinels[1].last_ok = Some(now - Duration::from_secs(3));
        s.sentinels[2].last_ok = Some(now - Duration::from_secs(5));
        assert_eq!(
            s.view("m", now).cut_off_for,
            Some(Duration::from_secs(3)),
            "the second most recent of three"
        );
        s.sentinels[1].reachable = true;
        assert_eq!(s.view("m", now).cut_off_for, None, "in sight");
    }

    #[test]
    fn down_after_is_the_smallest_a_member_reports() {
        let s = snap(&[at(1, "198.18.0.1"), at(1, "198.18.0.1"), DOWN]);
        assert_eq!(
            s.view("m", Instant::now()).down_after,
            Some(Duration::from_millis(1000))
        );
    }
}
