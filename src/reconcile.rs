//! The daemon's decision function: from what this node observes to what it should do, for one `[[havip]]`.
//!
//! Owns the *policy* only, as a pure function ([`plan`]) tested with tables. It does not talk to Sentinel, the
//! cloud or the kernel: the daemon (`daemon`) gathers an [`Observation`], calls [`plan`], and carries out the
//! [`Action`]s with the shared claim/release code (`claim`).
//!
//! The rules (issue 4, `reference/sentinel.md`):
//! - *Which master*: the newest configuration wins, i.e. the address with the highest `config-epoch` any
//!   reachable Sentinel reports, or a higher one this node saw earlier (an epoch only exists after a Sentinel
//!   majority elected a leader, so it is already a majority decision; a Sentinel that fell behind must not
//!   drag us back to an older one).
//! - *Whether to act*: only while a majority of the configured Sentinels is reachable. Agreement on the address
//!   is not required (waiting for gossip costs ~1.3 s).
//! - *Fencing*: a holder that cannot see a majority for `fence_after` releases the VIP and pauses writes on its
//!   local Redis; the pause is lifted only when the majority is back and still names this node.

use std::net::IpAddr;
use std::time::Duration;

/// One Sentinel configuration of a master: its address and the epoch that introduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterConfig {
    /// The master's IP as Sentinel reports it.
    pub ip: IpAddr,
    /// The master's port.
    pub port: u16,
    /// The `config-epoch` of that configuration.
    pub epoch: u64,
}

impl MasterConfig {
    /// The newer of two configurations (higher epoch; on a tie, `self`).
    pub fn newest(self, other: Option<MasterConfig>) -> MasterConfig {
        match other {
            Some(o) if o.epoch > self.epoch => o,
            _ => self,
        }
    }
}

/// What the cloud last said about the HAVIP's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudHolder {
    /// Not known (never asked, or the API failed).
    Unknown,
    /// `InstanceId` is this node's instance.
    ThisNode,
    /// `InstanceId` is another instance, or empty.
    Elsewhere,
}

/// Everything the decision needs, gathered by the daemon at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// A majority of the configured Sentinels answers right now.
    pub majority: bool,
    /// The newest configuration any reachable Sentinel reports (None if none knows the master).
    pub reported: Option<MasterConfig>,
    /// The newest configuration this node has seen before (remembered across snapshots).
    pub remembered: Option<MasterConfig>,
    /// How long the majority has been out of sight (zero while it is in sight).
    pub cut_off_for: Duration,
    /// After how long out of sight a holder fences itself; None = hold (never fence).
    pub fence_after: Option<Duration>,
    /// The VIP is bound on this node's interface.
    pub bound: bool,
    /// The cloud's view of the holder.
    pub cloud: CloudHolder,
    /// The epoch of the last successful claim by this node (None if it has not claimed since start).
    pub claimed_epoch: Option<u64>,
    /// A claim is running right now.
    pub claiming: bool,
    /// Writes on the local Redis are paused by this agent.
    pub paused: bool,
    /// The Redis-level fence is configured.
    pub redis_fence: bool,
}

/// Why a VIP is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The newest configuration names another master.
    Demoted,
    /// The Sentinel majority has been out of sight for longer than `fence_after`.
    Fenced,
}

impl ReleaseReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Demoted => "demoted",
            ReleaseReason::Fenced => "fenced",
        }
    }
}

/// One thing to do. The daemon executes them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make this node the holder: drift range, bind, announce, confirm (the shared claim code).
    Claim {
        /// The configuration that names this node.
        config: MasterConfig,
    },
    /// The VIP is bound and claimed, but the cloud names another holder: announce again.
    Reannounce,
    /// Stop a running claim: this node is no longer the desired holder.
    AbortClaim,
    /// Remove the VIP from the interface.
    Release {
        /// Why.
        reason: ReleaseReason,
    },
    /// Pause (or keep pausing) writes on the local Redis.
    PauseWrites,
    /// Lift this agent's pause of the local Redis.
    Unpause,
}

/// The decision's summary, logged with every plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The configuration acted on (newest of reported and remembered).
    pub config: Option<MasterConfig>,
    /// This node should hold the VIP.
    pub desired: bool,
    /// This node is cut off long enough to fence.
    pub fence: bool,
    /// What to do.
    pub actions: ActionList,
}

/// A small fixed-capacity list of actions (a plan never needs more than three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionList {
    items: [Option<Action>; 3],
}

impl ActionList {
    fn push(&mut self, a: Action) {
        let slot = self
            .items
            .iter_mut()
            .find(|s| s.is_none())
            .expect("a plan has at most three actions");
        *slot = Some(a);
    }

    /// The actions, in order.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.items.iter().flatten().copied()
    }

    /// The actions as a vector (for tests and logs).
    pub fn to_vec(&self) -> Vec<Action> {
        self.iter().collect()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
}

/// Decides what this node should do about one HAVIP. `me` is `node.address`.
pub fn plan(me: IpAddr, o: &Observation) -> Decision {
    let config = match (o.reported, o.remembered) {
        (Some(r), rem) => Some(r.newest(rem)),
        (None, rem) => rem,
    };
    let names_me = config.is_some_and(|c| c.ip == me);
    let desired = o.majority && names_me;
    let fence = !o.majority && o.fence_after.is_some_and(|after| o.cut_off_for >= after);
    let mut actions = ActionList::default();

    if desired {
        let config = config.expect("desired implies a configuration");
        let new_epoch = o.claimed_epoch.is_none_or(|e| config.epoch > e);
        if o.paused {
            // The majority is back and still names this node: the write pause is no longer needed.
            actions.push(Action::Unpause);
        }
        if !o.claiming {
            if !o.bound || new_epoch {
                actions.push(Action::Claim { config });
            } else if o.cloud == CloudHolder::Elsewhere {
                actions.push(Action::Reannounce);
            }
        }
    } else if o.majority {
        // Sentinel's majority names someone else (or nobody): give the VIP up at once.
        if o.claiming {
            actions.push(Action::AbortClaim);
        }
        if o.bound && config.is_some() {
            actions.push(Action::Release {
                reason: ReleaseReason::Demoted,
            });
        }
    } else if fence {
        // Cut off for too long: this node may be an isolated master that Sentinel is replacing.
        if o.claiming {
            actions.push(Action::AbortClaim);
        }
        if o.bound {
            actions.push(Action::Release {
                reason: ReleaseReason::Fenced,
            });
        }
        if o.redis_fence && (names_me || o.bound || o.paused) {
            actions.push(Action::PauseWrites);
        }
    }
    // Cut off but not yet for `fence_after` (or "hold"): keep what we have, start nothing new.
    Decision {
        config,
        desired,
        fence,
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12));

    fn cfg(ip: IpAddr, epoch: u64) -> MasterConfig {
        MasterConfig {
            ip,
            port: 6379,
            epoch,
        }
    }

    fn base() -> Observation {
        Observation {
            majority: true,
            reported: Some(cfg(ME, 1)),
            remembered: None,
            cut_off_for: Duration::ZERO,
            fence_after: Some(Duration::from_millis(300)),
            bound: false,
            cloud: CloudHolder::Unknown,
            claimed_epoch: None,
            claiming: false,
            paused: false,
            redis_fence: true,
        }
    }

    /// Every combination of: majority or not, reported epoch newer or older than the remembered one,
    /// holder (bound) or not, and cloud holder agreeing or not. Each row names the expected actions.
    #[test]
    fn plan_table_covers_majority_epoch_holder_and_cloud() {
        use Action::*;
        let claim_me_2 = Claim { config: cfg(ME, 2) };
        let demoted = Release {
            reason: ReleaseReason::Demoted,
        };
        // (majority, reported, remembered, bound, cloud, claimed_epoch) -> actions
        type Row = (
            bool,
            MasterConfig,
            Option<MasterConfig>,
            bool,
            CloudHolder,
            Option<u64>,
            Vec<Action>,
        );
        use CloudHolder::{Elsewhere as CE, ThisNode as CT};
        let rows: Vec<Row> = vec![
            // Majority, newer epoch names me.
            (
                true,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                false,
                CE,
                None,
                vec![claim_me_2],
            ),
            (
                true,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                false,
                CT,
                None,
                vec![claim_me_2],
            ),
            (
                true,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                true,
                CE,
                Some(1),
                vec![claim_me_2],
            ),
            (
                true,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                true,
                CT,
                Some(1),
                vec![claim_me_2],
            ),
            // Majority, already claimed this epoch: only a cloud disagreement needs a re-announce.
            (
                true,
                cfg(ME, 2),
                Some(cfg(ME, 2)),
                true,
                CT,
                Some(2),
                vec![],
            ),
            (
                true,
                cfg(ME, 2),
                Some(cfg(ME, 2)),
                true,
                CE,
                Some(2),
                vec![Reannounce],
            ),
            // Majority, claimed but someone removed the VIP: bind again.
            (
                true,
                cfg(ME, 2),
                Some(cfg(ME, 2)),
                false,
                CT,
                Some(2),
                vec![claim_me_2],
            ),
            (
                true,
                cfg(ME, 2),
                Some(cfg(ME, 2)),
                false,
                CE,
                Some(2),
                vec![claim_me_2],
            ),
            // Majority, reported epoch older than remembered: the remembered (other) config wins.
            (
                true,
                cfg(ME, 1),
                Some(cfg(OTHER, 2)),
                true,
                CT,
                Some(1),
                vec![demoted],
            ),
            (
                true,
                cfg(ME, 1),
                Some(cfg(OTHER, 2)),
                true,
                CE,
                Some(1),
                vec![demoted],
            ),
            (
                true,
                cfg(ME, 1),
                Some(cfg(OTHER, 2)),
                false,
                CT,
                None,
                vec![],
            ),
            (
                true,
                cfg(ME, 1),
                Some(cfg(OTHER, 2)),
                false,
                CE,
                None,
                vec![],
            ),
            // Majority, newer epoch names another node.
            (
                true,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                true,
                CT,
                Some(1),
                vec![demoted],
            ),
            (
                true,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                true,
                CE,
                Some(1),
                vec![demoted],
            ),
            (
                true,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                false,
                CT,
                None,
                vec![],
            ),
            (
                true,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                false,
                CE,
                None,
                vec![],
            ),
            // Majority, older reported epoch but remembered names me: stay.
            (
                true,
                cfg(OTHER, 1),
                Some(cfg(ME, 2)),
                true,
                CT,
                Some(2),
                vec![],
            ),
            (
                true,
                cfg(OTHER, 1),
                Some(cfg(ME, 2)),
                true,
                CE,
                Some(2),
                vec![Reannounce],
            ),
            // No majority (cut off, not yet for fence_after): never claim, never release.
            (
                false,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                false,
                CE,
                None,
                vec![],
            ),
            (
                false,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                false,
                CT,
                None,
                vec![],
            ),
            (
                false,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                true,
                CE,
                Some(1),
                vec![],
            ),
            (
                false,
                cfg(ME, 2),
                Some(cfg(OTHER, 1)),
                true,
                CT,
                Some(2),
                vec![],
            ),
            (
                false,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                true,
                CT,
                Some(1),
                vec![],
            ),
            (
                false,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                true,
                CE,
                Some(1),
                vec![],
            ),
            (
                false,
                cfg(OTHER, 2),
                Some(cfg(ME, 1)),
                false,
                CT,
                None,
                vec![],
            ),
            (
                false,
                cfg(ME, 1),
                Some(cfg(OTHER, 2)),
                false,
                CE,
                None,
                vec![],
            ),
        ];
        for (i, (majority, reported, remembered, bound, cloud, claimed, want)) in
            rows.into_iter().enumerate()
        {
            let o = Observation {
                majority,
                reported: Some(reported),
                remembered,
                bound,
                cloud,
                claimed_epoch: claimed,
                ..base()
            };
            let d = plan(ME, &o);
            assert_eq!(d.actions.to_vec(), want, "row {i}: {o:?} gave {d:?}");
            assert_eq!(
                d.desired,
                majority && reported.newest(remembered).ip == ME,
                "row {i}: desired"
            );
        }
    }

    #[test]
    fn cut_off_holder_releases_and_pauses_only_after_fence_after() {
        let holding = Observation {
            majority: false,
            bound: true,
            claimed_epoch: Some(1),
            cloud: CloudHolder::ThisNode,
            ..base()
        };
        let early = Observation {
            cut_off_for: Duration::from_millis(299),
            ..holding
        };
        assert!(plan(ME, &early).actions.is_empty());
        let late = Observation {
            cut_off_for: Duration::from_millis(300),
            ..holding
        };
        let d = plan(ME, &late);
        assert!(d.fence);
        assert_eq!(
            d.actions.to_vec(),
            vec![
                Action::Release {
                    reason: ReleaseReason::Fenced
                },
                Action::PauseWrites
            ]
        );
    }

    #[test]
    fn fenced_node_keeps_pausing_while_cut_off_and_unpauses_when_majority_names_it_again() {
        let fenced = Observation {
            majority: false,
            cut_off_for: Duration::from_secs(5),
            bound: false,
            paused: true,
            ..base()
        };
        assert_eq!(
            plan(ME, &fenced).actions.to_vec(),
            vec![Action::PauseWrites]
        );
        let back = Observation {
            majority: true,
            cut_off_for: Duration::ZERO,
            ..fenced
        };
        assert_eq!(
            plan(ME, &back).actions.to_vec(),
            vec![Action::Unpause, Action::Claim { config: cfg(ME, 1) }]
        );
    }

    #[test]
    fn fenced_node_that_majority_replaced_lets_the_pause_expire() {
        let o = Observation {
            majority: true,
            reported: Some(cfg(OTHER, 2)),
            remembered: Some(cfg(ME, 1)),
            paused: true,
            ..base()
        };
        assert!(plan(ME, &o).actions.is_empty());
    }

    #[test]
    fn hold_mode_never_fences() {
        let o = Observation {
            majority: false,
            cut_off_for: Duration::from_secs(3600),
            fence_after: None,
            bound: true,
            claimed_epoch: Some(1),
            ..base()
        };
        let d = plan(ME, &o);
        assert!(!d.fence);
        assert!(d.actions.is_empty());
    }

    #[test]
    fn no_redis_fence_configured_means_release_only() {
        let o = Observation {
            majority: false,
            cut_off_for: Duration::from_secs(1),
            bound: true,
            redis_fence: false,
            ..base()
        };
        assert_eq!(
            plan(ME, &o).actions.to_vec(),
            vec![Action::Release {
                reason: ReleaseReason::Fenced
            }]
        );
    }

    #[test]
    fn demotion_during_a_claim_aborts_it_then_releases() {
        let o = Observation {
            reported: Some(cfg(OTHER, 3)),
            remembered: Some(cfg(ME, 2)),
            claiming: true,
            bound: true,
            ..base()
        };
        assert_eq!(
            plan(ME, &o).actions.to_vec(),
            vec![
                Action::AbortClaim,
                Action::Release {
                    reason: ReleaseReason::Demoted
                }
            ]
        );
    }

    #[test]
    fn a_running_claim_is_not_started_twice() {
        let o = Observation {
            claiming: true,
            ..base()
        };
        assert!(plan(ME, &o).actions.is_empty());
    }

    #[test]
    fn unknown_master_does_nothing_and_keeps_a_bound_vip() {
        let o = Observation {
            reported: None,
            remembered: None,
            bound: true,
            ..base()
        };
        let d = plan(ME, &o);
        assert!(d.actions.is_empty() && !d.desired && d.config.is_none());
    }

    #[test]
    fn remembered_config_is_used_when_no_reachable_sentinel_reports_one() {
        let o = Observation {
            reported: None,
            remembered: Some(cfg(ME, 4)),
            ..base()
        };
        assert_eq!(
            plan(ME, &o).actions.to_vec(),
            vec![Action::Claim { config: cfg(ME, 4) }]
        );
    }
}
