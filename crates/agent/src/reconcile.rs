//! The decision: from what this node observes to what it should do, for one `[[havip]]`.
//!
//! Owns the *policy*, pure and tested with tables, in two layers:
//! - [`plan`]: one [`Observation`] in, the [`Action`]s out. No state.
//! - [`HavipMachine`]: the per-HAVIP memory every front door shares (the remembered configuration and when
//!   to let it go, the fence clock, the claim back-off, the failover id), fed by [`HavipMachine::observe`]
//!   and asked with [`HavipMachine::plan`]. The clock is passed in as a value. The daemon keeps one machine
//!   per HAVIP for its whole life; `migrate-havip` runs a fresh one for one step (or a few samples).
//!
//! It does not talk to Sentinel, the cloud or the kernel: the front doors observe (`sentinel::probe`, the
//! watcher), and `act` carries the actions out.
//!
//! The rules (issue 4 and 9, `reference/sentinel.md`):
//! - *Which master*: the newest *corroborated* configuration ([`crate::sentinel::MasterView::newest`]), or
//!   a higher one this node remembers (a Sentinel that fell behind must not drag us back). What is
//!   remembered can be forgotten: when a majority of the configured Sentinels has agreed on another
//!   configuration for [`Policy::forget_after`] (Sentinels re-provisioned, epochs restarted from 0), the
//!   machine follows the majority.
//! - *Whether to act*: only while a majority of the configured Sentinels is reachable (outsiders excluded).
//! - *Fencing*: a holder that has not seen a majority for `fence_after` (counted across samples) releases the
//!   VIP and pauses writes on its local Redis.
//! - *Pausing*, one rule for the daemon and `migrate-havip`, whoever set the pause: pause while fenced and
//!   this node is (or was) the master; lift the pause only when the majority is back and names this node; if
//!   the majority names another node, let the pause expire (Sentinel is turning this Redis into a replica,
//!   and lifting it earlier would let a stale master take writes that are then lost).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::FenceAfter;
pub use crate::sentinel::MasterConfig;
use crate::sentinel::MasterView;

/// `fence_after = "auto"` when no Sentinel has reported `down-after-milliseconds` yet: a third of Sentinel's
/// default (30 s).
pub const FENCE_AFTER_FALLBACK: Duration = Duration::from_secs(10);
/// How long a majority of the Sentinels must agree on a configuration other than the remembered one before
/// the machine lets the remembered one go. Sentinel gossips a new configuration to every Sentinel within
/// about 2 s (hello period), so a majority still on an older configuration after 10 s is not lag: the
/// Sentinels were re-provisioned or their epochs restarted.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
/// The first retry after a failed claim; doubles up to [`CLAIM_RETRY_MAX`].
const CLAIM_RETRY_BASE: Duration = Duration::from_millis(500);
/// The longest wait between failed claims.
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(10);

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
    /// A member Sentinel reports a newer configuration than the one acted on, not corroborated yet: hold
    /// (start nothing new) until it is corroborated or goes away.
    pub pending_newer: bool,
    /// A write pause is in force on the local Redis (set by the daemon or by `migrate-havip`).
    pub paused: bool,
    /// A pause is due: none is in force, or less than half of its length is left.
    pub pause_due: bool,
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

    /// Keeps only the actions `keep` accepts, in order (a front door's own filter, e.g. the
    /// notification-script never re-claims a bound VIP).
    pub fn retain(&mut self, keep: impl Fn(&Action) -> bool) {
        let kept: Vec<Action> = self.iter().filter(|a| keep(a)).collect();
        *self = ActionList::default();
        for a in kept {
            self.push(a);
        }
    }
}

/// Decides what this node should do about one HAVIP. `me` is `node.address`.
pub fn plan(me: IpAddr, o: &Observation) -> Decision {
    let config = match (o.reported, o.remembered) {
        (Some(r), Some(m)) if m.epoch > r.epoch => Some(m),
        (Some(r), _) => Some(r),
        (None, m) => m,
    };
    let names_me = config.is_some_and(|c| c.ip == me);
    let desired = o.majority && names_me;
    let fence = !o.majority && o.fence_after.is_some_and(|after| o.cut_off_for >= after);
    let mut actions = ActionList::default();

    if desired && o.pending_newer {
        // A newer configuration is on its way (the failover leader's answer before ROLE or a second Sentinel
        // confirms it, or an old master's own Sentinel right after a heal): keep what we have, start nothing.
    } else if desired {
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
        if o.redis_fence && o.pause_due && (names_me || o.bound || o.paused) {
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

/// The fixed inputs of one HAVIP's machine.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This node's Redis address as Sentinel reports it (`node.address`).
    pub me: IpAddr,
    /// The Sentinel master name.
    pub master: String,
    /// `sentinel.fence_after`.
    pub fence_after: FenceAfter,
    /// See [`FORGET_AFTER`].
    pub forget_after: Duration,
    /// `[redis]` with `pause_writes`: the Redis-level fence is configured.
    pub redis_fence: bool,
    /// The length of one write pause (renewed at half of it while still fenced).
    pub pause: Duration,
}

/// What this node's own side looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Local {
    /// The VIP is bound on the interface.
    pub bound: bool,
    /// A write pause is in force on the local Redis for this much longer (whoever set it).
    pub pause_left: Option<Duration>,
}

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    Idle,
    Running { config: MasterConfig },
    RetryAt(Instant),
}

/// What [`HavipMachine::observe`] noticed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Noticed {
    /// A newer corroborated configuration was adopted.
    pub switched: Option<MasterConfig>,
    /// The remembered configuration was let go for the one the majority agrees on.
    pub forgot: Option<MasterConfig>,
}

/// One HAVIP's decision state. See the module docs; every method is pure (the clock is an argument).
#[derive(Debug, Clone)]
pub struct HavipMachine {
    policy: Policy,
    remembered: Option<MasterConfig>,
    /// The configuration a majority agrees on while it differs from the remembered one, and since when.
    disagreement: Option<(MasterConfig, Instant)>,
    cut_off_since: Option<Instant>,
    known_down_after: Option<Duration>,
    claimed_epoch: Option<u64>,
    claim: ClaimState,
    claim_failures: u32,
    failover_id: Option<String>,
    fenced: bool,
    last: Option<(Observation, MasterView)>,
}

impl HavipMachine {
    /// A machine that has seen nothing yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            remembered: None,
            disagreement: None,
            cut_off_since: None,
            known_down_after: None,
            claimed_epoch: None,
            claim: ClaimState::Idle,
            claim_failures: 0,
            failover_id: None,
            fenced: false,
            last: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The failover this HAVIP is in (`<master>-<epoch>`, or `<master>-fence-<unix seconds>`).
    pub fn failover_id(&self) -> Option<&str> {
        self.failover_id.as_deref()
    }

    /// The highest corroborated configuration seen (and not let go).
    pub fn remembered(&self) -> Option<MasterConfig> {
        self.remembered
    }

    /// The last observation and view, as [`HavipMachine::observe`] built them.
    pub fn last(&self) -> Option<&(Observation, MasterView)> {
        self.last.as_ref()
    }

    /// `fence_after` for this master now: `"auto"` is a third of the smallest `down-after-milliseconds` a
    /// member Sentinel reports (or last reported), [`FENCE_AFTER_FALLBACK`] before any did.
    pub fn fence_after(&self) -> Option<Duration> {
        match self.policy.fence_after {
            FenceAfter::Hold => None,
            FenceAfter::After(d) => Some(d),
            FenceAfter::Auto => Some(
                self.known_down_after
                    .map(|d| d / 3)
                    .unwrap_or(FENCE_AFTER_FALLBACK),
            ),
        }
    }

    /// When the fence is due if the majority stays out of sight (for the caller's timer).
    pub fn fence_due_at(&self) -> Option<Instant> {
        Some(self.cut_off_since? + self.fence_after()?)
    }

    /// When a failed claim may be retried.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.claim {
            ClaimState::RetryAt(t) => Some(t),
            _ => None,
        }
    }

    /// Takes in one sample: the Sentinels' view of this master, this node's side and the cloud's holder.
    pub fn observe(
        &mut self,
        view: &MasterView,
        local: Local,
        cloud: CloudHolder,
        now: Instant,
    ) -> Noticed {
        let mut noticed = Noticed::default();
        if let Some(d) = view.down_after {
            self.known_down_after = Some(d);
        }
        let reported = view.newest.as_ref().map(|n| n.config());
        if let Some(r) = reported
            && self.remembered.is_none_or(|m| r.epoch > m.epoch)
        {
            self.adopt(r);
            noticed.switched = Some(r);
        }
        noticed.forgot = self.forget_if_outvoted(view, now);
        if view.majority {
            self.cut_off_since = None;
        } else {
            let seen_by_watcher = view.cut_off_for.and_then(|d| now.checked_sub(d));
            let since = [self.cut_off_since, seen_by_watcher, Some(now)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            self.cut_off_since = Some(since);
        }
        let acted_on = [reported, self.remembered]
            .into_iter()
            .flatten()
            .map(|c| c.epoch)
            .max();
        let obs = Observation {
            majority: view.majority,
            pending_newer: view
                .pending
                .as_ref()
                .is_some_and(|p| acted_on.is_none_or(|e| p.epoch > e)),
            reported,
            remembered: self.remembered,
            cut_off_for: self
                .cut_off_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            fence_after: self.fence_after(),
            bound: local.bound,
            cloud,
            claimed_epoch: self.claimed_epoch,
            claiming: match self.claim {
                ClaimState::Idle => false,
                ClaimState::Running { .. } => true,
                ClaimState::RetryAt(t) => now < t,
            },
            paused: local.pause_left.is_some(),
            pause_due: local
                .pause_left
                .is_none_or(|left| left < self.policy.pause / 2),
            redis_fence: self.policy.redis_fence,
        };
        self.last = Some((obs, view.clone()));
        noticed
    }

    fn adopt(&mut self, c: MasterConfig) {
        self.remembered = Some(c);
        self.disagreement = None;
        self.failover_id = Some(format!("{}-{}", self.policy.master, c.epoch));
    }

    /// Lets the remembered configuration go when a majority has agreed on another one for `forget_after`.
    fn forget_if_outvoted(&mut self, view: &MasterView, now: Instant) -> Option<MasterConfig> {
        let outvoted = view
            .agreed
            .filter(|a| view.majority && Some(*a) != self.remembered);
        let Some(agreed) = outvoted else {
            self.disagreement = None;
            return None;
        };
        let since = match self.disagreement {
            Some((c, since)) if c == agreed => since,
            _ => {
                self.disagreement = Some((agreed, now));
                now
            }
        };
        if now.saturating_duration_since(since) < self.policy.forget_after {
            return None;
        }
        self.adopt(agreed);
        // A claim made under the forgotten configuration is not a claim under this one.
        self.claimed_epoch = None;
        Some(agreed)
    }

    /// What to do now, from the last observation. `wall` names a fence's failover id.
    pub fn plan(&mut self, wall: SystemTime) -> Decision {
        let Some((obs, _)) = &self.last else {
            return Decision {
                config: None,
                desired: false,
                fence: false,
                actions: ActionList::default(),
            };
        };
        let d = plan(self.policy.me, obs);
        if d.fence && !self.fenced {
            self.failover_id = Some(format!(
                "{}-fence-{}",
                self.policy.master,
                crate::clock::unix_seconds(wall)
            ));
        }
        self.fenced = d.fence;
        d
    }

    /// A claim for `config` started.
    pub fn claim_started(&mut self, config: MasterConfig) {
        self.claim = ClaimState::Running { config };
    }

    /// The running claim ended: `ok` when its local part worked (the cloud may still be unconfirmed).
    /// Returns the wait before a retry after a failure.
    pub fn claim_finished(&mut self, ok: bool, now: Instant) -> Option<Duration> {
        let ClaimState::Running { config } = self.claim else {
            return None;
        };
        if ok {
            self.claimed_epoch = Some(config.epoch);
            self.claim_failures = 0;
            self.claim = ClaimState::Idle;
            return None;
        }
        self.claim_failures = self.claim_failures.saturating_add(1);
        let wait = CLAIM_RETRY_BASE
            .saturating_mul(1 << (self.claim_failures - 1).min(8))
            .min(CLAIM_RETRY_MAX);
        self.claim = ClaimState::RetryAt(now + wait);
        Some(wait)
    }

    /// The running claim was aborted (this node is no longer the desired holder).
    pub fn claim_aborted(&mut self) {
        self.claim = ClaimState::Idle;
    }

    /// The VIP was removed from this node.
    pub fn released(&mut self) {
        self.claimed_epoch = None;
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
            pending_newer: false,
            paused: false,
            pause_due: true,
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
                majority
                    && remembered
                        .filter(|m| m.epoch > reported.epoch)
                        .unwrap_or(reported)
                        .ip
                        == ME,
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

    mod machine {
        use super::*;
        use crate::sentinel::{Corroboration, MasterView, Newest};

        fn policy() -> Policy {
            Policy {
                me: ME,
                master: "m".into(),
                fence_after: FenceAfter::After(Duration::from_millis(300)),
                forget_after: Duration::from_secs(10),
                redis_fence: true,
                pause: Duration::from_secs(30),
            }
        }

        fn newest(c: MasterConfig) -> Newest {
            Newest {
                ip: c.ip,
                port: c.port,
                epoch: c.epoch,
                reported_by: vec!["s0".into()],
                first_seen: None,
                corroboration: Some(Corroboration::Peers),
            }
        }

        /// A view where the majority is in sight and names `c`, agreed by the majority.
        fn names(c: MasterConfig) -> MasterView {
            MasterView {
                total: 3,
                members: 3,
                majority: true,
                newest: Some(newest(c)),
                pending: None,
                agreed: Some(c),
                outsiders: vec![],
                cut_off_for: None,
                down_after: Some(Duration::from_secs(1)),
            }
        }

        fn cut_off() -> MasterView {
            MasterView {
                members: 1,
                majority: false,
                newest: None,
                agreed: None,
                ..names(cfg(ME, 1))
            }
        }

        fn bound() -> Local {
            Local {
                bound: true,
                pause_left: None,
            }
        }

        /// Feeds one sample and returns the plan.
        fn step(m: &mut HavipMachine, v: &MasterView, l: Local, at: Instant) -> Vec<Action> {
            m.observe(v, l, CloudHolder::Unknown, at);
            m.plan(SystemTime::UNIX_EPOCH).actions.to_vec()
        }

        struct Row {
            name: &'static str,
            /// Samples fed in order: (view, local, ms after t0).
            samples: Vec<(MasterView, Local, u64)>,
            /// The plan after the last sample.
            want: Vec<Action>,
        }

        #[test]
        fn machine_table_covers_stale_uncorroborated_reprovisioned_and_fenced_inputs() {
            let demoted = Action::Release {
                reason: ReleaseReason::Demoted,
            };
            let fenced = Action::Release {
                reason: ReleaseReason::Fenced,
            };
            let lone_newer = MasterView {
                newest: Some(newest(cfg(ME, 5))),
                pending: Some(Newest {
                    corroboration: None,
                    ..newest(cfg(OTHER, 999_999))
                }),
                ..names(cfg(ME, 5))
            };
            let rows = vec![
                Row {
                    name: "a stale (older) configuration after a newer one changes nothing",
                    samples: vec![
                        (names(cfg(ME, 5)), bound(), 0),
                        (names(cfg(OTHER, 4)), bound(), 10),
                    ],
                    want: vec![Action::Claim { config: cfg(ME, 5) }],
                },
                Row {
                    name: "an uncorroborated newer epoch (pending) moves nothing: no claim, no release",
                    samples: vec![(lone_newer, bound(), 0)],
                    want: vec![],
                },
                Row {
                    name: "after a heal, the old master's own sentinel names it while a newer config is pending: hold",
                    samples: vec![(
                        MasterView {
                            newest: Some(newest(cfg(ME, 5))),
                            pending: Some(Newest {
                                corroboration: None,
                                ..newest(cfg(OTHER, 6))
                            }),
                            agreed: None,
                            ..names(cfg(ME, 5))
                        },
                        Local::default(),
                        0,
                    )],
                    want: vec![],
                },
                Row {
                    name: "a corroborated newer epoch naming another node demotes",
                    samples: vec![
                        (names(cfg(ME, 5)), bound(), 0),
                        (names(cfg(OTHER, 6)), bound(), 10),
                    ],
                    want: vec![demoted],
                },
                Row {
                    name: "re-provisioned sentinels (epochs from 0): the remembered config holds for a while",
                    samples: vec![
                        (names(cfg(ME, 7)), bound(), 0),
                        (names(cfg(OTHER, 0)), bound(), 100),
                        (names(cfg(OTHER, 0)), bound(), 9_000),
                    ],
                    want: vec![Action::Claim { config: cfg(ME, 7) }],
                },
                Row {
                    name: "re-provisioned sentinels: after forget_after the majority is followed",
                    samples: vec![
                        (names(cfg(ME, 7)), bound(), 0),
                        (names(cfg(OTHER, 0)), bound(), 100),
                        (names(cfg(OTHER, 0)), bound(), 10_100),
                    ],
                    want: vec![demoted],
                },
                Row {
                    name: "re-provisioned sentinels naming this node: it claims under epoch 0",
                    samples: vec![
                        (names(cfg(OTHER, 7)), Local::default(), 0),
                        (names(cfg(ME, 0)), Local::default(), 100),
                        (names(cfg(ME, 0)), Local::default(), 10_100),
                    ],
                    want: vec![Action::Claim { config: cfg(ME, 0) }],
                },
                Row {
                    name: "cut off across samples shorter than fence_after: hold",
                    samples: vec![
                        (names(cfg(ME, 1)), bound(), 0),
                        (cut_off(), bound(), 100),
                        (cut_off(), bound(), 250),
                        (cut_off(), bound(), 399),
                    ],
                    want: vec![],
                },
                Row {
                    name: "cut off across samples spanning fence_after: fence",
                    samples: vec![
                        (names(cfg(ME, 1)), bound(), 0),
                        (cut_off(), bound(), 100),
                        (cut_off(), bound(), 250),
                        (cut_off(), bound(), 400),
                    ],
                    want: vec![fenced, Action::PauseWrites],
                },
                Row {
                    name: "one sample of the majority in between restarts the fence clock",
                    samples: vec![
                        (names(cfg(ME, 1)), bound(), 0),
                        (cut_off(), bound(), 100),
                        (names(cfg(ME, 1)), bound(), 300),
                        (cut_off(), bound(), 350),
                        (cut_off(), bound(), 600),
                    ],
                    want: vec![],
                },
                Row {
                    name: "the watcher's last sight of the majority counts from before the first sample",
                    samples: vec![(
                        MasterView {
                            cut_off_for: Some(Duration::from_millis(500)),
                            ..cut_off()
                        },
                        bound(),
                        1_000,
                    )],
                    want: vec![fenced, Action::PauseWrites],
                },
            ];
            for row in rows {
                let t0 = Instant::now();
                let mut m = HavipMachine::new(policy());
                let mut got = vec![];
                for (view, local, ms) in &row.samples {
                    got = step(&mut m, view, *local, t0 + Duration::from_millis(*ms));
                }
                assert_eq!(got, row.want, "{}", row.name);
            }
        }

        #[test]
        fn any_pause_is_lifted_when_the_majority_names_this_node_and_left_to_expire_otherwise() {
            let t0 = Instant::now();
            let paused_by_someone = Local {
                bound: true,
                pause_left: Some(Duration::from_secs(20)),
            };
            let mut m = HavipMachine::new(policy());
            assert_eq!(
                step(&mut m, &names(cfg(ME, 1)), paused_by_someone, t0),
                vec![Action::Unpause, Action::Claim { config: cfg(ME, 1) }]
            );
            let mut m = HavipMachine::new(policy());
            let old_master = Local {
                bound: false,
                ..paused_by_someone
            };
            assert_eq!(
                step(&mut m, &names(cfg(OTHER, 2)), old_master, t0),
                vec![],
                "the majority names another node: the pause expires by itself"
            );
        }

        #[test]
        fn a_fenced_node_renews_the_pause_only_when_half_of_it_is_gone() {
            let t0 = Instant::now();
            let mut m = HavipMachine::new(policy());
            step(&mut m, &names(cfg(ME, 1)), bound(), t0);
            let late = t0 + Duration::from_secs(1);
            let long_cut_off = MasterView {
                cut_off_for: Some(Duration::from_secs(1)),
                ..cut_off()
            };
            let fresh = Local {
                bound: false,
                pause_left: Some(Duration::from_secs(20)),
            };
            assert_eq!(step(&mut m, &long_cut_off, fresh, late), vec![]);
            let stale = Local {
                pause_left: Some(Duration::from_secs(14)),
                ..fresh
            };
            assert_eq!(
                step(&mut m, &long_cut_off, stale, late),
                vec![Action::PauseWrites]
            );
        }

        #[test]
        fn claims_back_off_after_failures_and_a_success_counts_the_epoch() {
            let t0 = Instant::now();
            let mut m = HavipMachine::new(policy());
            let none = Local::default();
            assert_eq!(
                step(&mut m, &names(cfg(ME, 3)), none, t0),
                vec![Action::Claim { config: cfg(ME, 3) }]
            );
            m.claim_started(cfg(ME, 3));
            assert_eq!(step(&mut m, &names(cfg(ME, 3)), none, t0), vec![]);
            let wait = m.claim_finished(false, t0).unwrap();
            assert_eq!(
                step(&mut m, &names(cfg(ME, 3)), none, t0 + wait / 2),
                vec![]
            );
            assert_eq!(
                step(&mut m, &names(cfg(ME, 3)), none, t0 + wait),
                vec![Action::Claim { config: cfg(ME, 3) }]
            );
            m.claim_started(cfg(ME, 3));
            assert!(m.claim_finished(true, t0 + wait).is_none());
            assert_eq!(step(&mut m, &names(cfg(ME, 3)), bound(), t0 + wait), vec![]);
            assert_eq!(m.failover_id(), Some("m-3"));
        }

        #[test]
        fn a_fence_gets_its_own_failover_id() {
            let t0 = Instant::now();
            let mut m = HavipMachine::new(policy());
            step(&mut m, &names(cfg(ME, 1)), bound(), t0);
            m.observe(
                &cut_off(),
                bound(),
                CloudHolder::Unknown,
                t0 + Duration::from_secs(1),
            );
            m.observe(
                &cut_off(),
                bound(),
                CloudHolder::Unknown,
                t0 + Duration::from_secs(2),
            );
            let d = m.plan(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
            assert!(d.fence);
            assert_eq!(m.failover_id(), Some("m-fence-1700000000"));
        }
    }
}
