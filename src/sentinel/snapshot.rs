//! The watcher's published view: what every configured Sentinel last said, and the rules that read it.
//!
//! Owns the pure reading rules: reachability and majority, and "the newest configuration wins" (highest
//! `config-epoch` among reachable Sentinels). It does not talk to Sentinel (see [`super::watcher`]) and does
//! not decide what to do (the reconciler does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::MasterInfo;

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
    /// Its answer per master name. Only masters it answered well for; empty while unreachable.
    pub masters: HashMap<String, MasterInfo>,
    /// Per master, when this Sentinel's (epoch, address) for it last changed: when it first showed the
    /// configuration it now holds.
    pub master_since: HashMap<String, Instant>,
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
            masters: HashMap::new(),
            master_since: HashMap::new(),
            error: Some("not connected yet".into()),
        }
    }
}

/// The newest configuration of one master: see [`Snapshot::newest`].
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
}

impl Newest {
    /// The address as a socket address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }
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

    /// How many Sentinels are reachable.
    pub fn reachable(&self) -> usize {
        self.sentinels.iter().filter(|s| s.reachable).count()
    }

    /// Whether more than half of the configured Sentinels are reachable. Without it the agent is cut off
    /// and must not act (and must fence itself if it holds a VIP).
    pub fn has_majority(&self) -> bool {
        self.reachable() > self.total / 2
    }

    /// The newest configuration of `master`: the address with the highest `config-epoch` among reachable
    /// Sentinels. A higher epoch only exists after a Sentinel majority elected that failover's leader, so
    /// it is already a majority decision; waiting for the other Sentinels to agree would only add gossip
    /// delay. If two addresses carry the same epoch (not expected from Sentinel), the one reported by more
    /// Sentinels wins, then the lowest address, so the choice is deterministic.
    pub fn newest(&self, master: &str) -> Option<Newest> {
        // (epoch, ip, port) -> reporting sentinel indices
        let mut configs: Vec<((u64, IpAddr, u16), Vec<usize>)> = Vec::new();
        for (i, s) in self.sentinels.iter().enumerate() {
            if !s.reachable {
                continue;
            }
            let Some(m) = s.masters.get(master) else {
                continue;
            };
            let key = (m.config_epoch, m.ip, m.port);
            match configs.iter_mut().find(|(k, _)| *k == key) {
                Some((_, who)) => who.push(i),
                None => configs.push((key, vec![i])),
            }
        }
        let ((epoch, ip, port), who) = configs.into_iter().max_by(|(ka, wa), (kb, wb)| {
            ka.0.cmp(&kb.0)
                .then(wa.len().cmp(&wb.len()))
                // Reversed: among equals the lowest address wins.
                .then((kb.1, kb.2).cmp(&(ka.1, ka.2)))
        })?;
        let first_seen = who
            .iter()
            .filter_map(|i| self.sentinels[*i].master_since.get(master).copied())
            .min();
        Some(Newest {
            ip,
            port,
            epoch,
            reported_by: who
                .iter()
                .map(|i| self.sentinels[*i].addr.clone())
                .collect(),
            first_seen,
        })
    }

    /// The smallest `down-after-milliseconds` any reachable Sentinel reports for `master`: Sentinel starts a
    /// failover about that long after losing the master, so self-fencing must happen well within it.
    pub fn min_down_after(&self, master: &str) -> Option<Duration> {
        self.sentinels
            .iter()
            .filter(|s| s.reachable)
            .filter_map(|s| s.masters.get(master))
            .map(|m| m.down_after)
            .min()
    }

    /// The state of the Sentinel configured as `addr`.
    pub fn sentinel(&self, addr: &str) -> Option<&SentinelState> {
        self.sentinels.iter().find(|s| s.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    /// One Sentinel in a table: reachable, and its (epoch, ip, down-after ms) for master `m` if any.
    type Row<'a> = (bool, Option<(u64, &'a str, u64)>);

    /// A snapshot from one [`Row`] per Sentinel.
    fn snap(states: &[Row]) -> Snapshot {
        let addrs: Vec<String> = (0..states.len()).map(|i| format!("s{i}:26379")).collect();
        let mut s = Snapshot::empty(&addrs);
        let t0 = Instant::now();
        for (i, (reachable, m)) in states.iter().enumerate() {
            let st = &mut s.sentinels[i];
            st.reachable = *reachable;
            if let Some((epoch, ip, down)) = m {
                st.masters.insert("m".into(), info(*epoch, ip, *down));
                st.master_since
                    .insert("m".into(), t0 + Duration::from_millis(10 * i as u64));
            }
        }
        s
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
            let s = snap(&reach.iter().map(|r| (*r, None)).collect::<Vec<_>>());
            assert_eq!(s.reachable(), *want_n, "{reach:?}");
            assert_eq!(s.has_majority(), *want_majority, "{reach:?}");
        }
    }

    #[test]
    fn newest_picks_the_highest_epoch_among_reachable_sentinels() {
        type Case<'a> = (
            &'a str,
            Vec<(bool, Option<(u64, &'a str, u64)>)>,
            Option<(u64, &'a str, Vec<usize>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "all agree",
                vec![(true, Some((1, "10.0.0.1", 1000))); 3],
                Some((1, "10.0.0.1", vec![0, 1, 2])),
            ),
            (
                "one leader ahead wins alone",
                vec![
                    (true, Some((2, "10.0.0.2", 1000))),
                    (true, Some((1, "10.0.0.1", 1000))),
                    (true, Some((1, "10.0.0.1", 1000))),
                ],
                Some((2, "10.0.0.2", vec![0])),
            ),
            (
                "unreachable sentinel's newer epoch is ignored",
                vec![
                    (false, Some((5, "10.0.0.9", 1000))),
                    (true, Some((1, "10.0.0.1", 1000))),
                    (true, Some((1, "10.0.0.1", 1000))),
                ],
                Some((1, "10.0.0.1", vec![1, 2])),
            ),
            (
                "same epoch, two addresses: more reporters win",
                vec![
                    (true, Some((3, "10.0.0.1", 1000))),
                    (true, Some((3, "10.0.0.2", 1000))),
                    (true, Some((3, "10.0.0.2", 1000))),
                ],
                Some((3, "10.0.0.2", vec![1, 2])),
            ),
            (
                "same epoch, same count: lowest address wins",
                vec![
                    (true, Some((3, "10.0.0.2", 1000))),
                    (true, Some((3, "10.0.0.1", 1000))),
                    (true, None),
                ],
                Some((3, "10.0.0.1", vec![1])),
            ),
            (
                "no sentinel knows the master",
                vec![(true, None), (true, None), (false, None)],
                None,
            ),
            (
                "nobody reachable",
                vec![(false, Some((1, "10.0.0.1", 1000)))],
                None,
            ),
        ];
        for (label, states, want) in cases {
            let s = snap(&states);
            let got = s.newest("m");
            match (got, want) {
                (None, None) => {}
                (Some(g), Some((epoch, ip, who))) => {
                    assert_eq!(g.epoch, epoch, "{label}");
                    assert_eq!(g.ip, ip.parse::<IpAddr>().unwrap(), "{label}");
                    let who: Vec<String> = who.iter().map(|i| format!("s{i}:26379")).collect();
                    assert_eq!(g.reported_by, who, "{label}");
                    let first = who
                        .iter()
                        .map(|a| s.sentinel(a).unwrap().master_since["m"])
                        .min();
                    assert_eq!(g.first_seen, first, "{label}");
                }
                (g, w) => panic!("{label}: got {g:?}, want {w:?}"),
            }
            assert_eq!(s.newest("other"), None, "{label}: unknown master");
        }
    }

    #[test]
    fn min_down_after_reads_only_reachable_sentinels() {
        let s = snap(&[
            (true, Some((1, "10.0.0.1", 5000))),
            (true, Some((1, "10.0.0.1", 3000))),
            (false, Some((1, "10.0.0.1", 100))),
        ]);
        assert_eq!(s.min_down_after("m"), Some(Duration::from_millis(3000)));
        assert_eq!(s.min_down_after("other"), None);
    }
}
