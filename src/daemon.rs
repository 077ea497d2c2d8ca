//! `havip-agent run`: the level-triggered loop that keeps each HAVIP on Sentinel's current master.
//!
//! Owns the per-HAVIP tasks: gathering an [`Observation`] from the Sentinel watcher's snapshot, the local
//! binding and the cloud view; calling the pure [`plan`]; carrying out the actions with the shared claim code
//! (`claim`), the Redis fence (`fence`), hooks and alerts; timers for re-announcing, verifying and repairing
//! drift; status and metrics. It does not parse Sentinel replies (`sentinel`), sign requests (`cloud`) or
//! touch the kernel directly (`net`).
//!
//! Every HAVIP has its own task, so a slow cloud call for one never delays another; within a task, every
//! slow thing (claim, cloud verify, Redis pause) runs in a spawned task that reports back on a channel, so
//! the loop itself never waits on the network and reacts to the next snapshot at once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::alerts::{Alert, AlertKind, Alerter};
use crate::claim::{ClaimError, ClaimOptions, ClaimOutcome, Claimer, HavipLock, Progress, Step};
use crate::cloud::{CloudError, HaVip};
use crate::config::{Config, FenceAfter, HavipConfig, OnShutdown, Scope};
use crate::fence::RedisFence;
use crate::hooks::{HookContext, Hooks};
use crate::metrics::Metrics;
use crate::net::Change;
use crate::node::Identity;
use crate::reconcile::{
    Action, CloudHolder, Decision, MasterConfig, Observation, ReleaseReason, plan,
};
use crate::sentinel::conn::ConnectOptions;
use crate::sentinel::snapshot::Snapshot;
use crate::sentinel::watcher::{ObservedEvent, WatchOptions, Watcher};
use crate::status::{HavipStatus, Health, StatusHandle, StatusReport, rfc3339};

/// `fence_after = "auto"` when no Sentinel has reported `down-after-milliseconds` yet: a third of Sentinel's
/// default (30 s).
const FENCE_AFTER_FALLBACK: Duration = Duration::from_secs(10);
/// How long a stopping agent lets a running claim finish its first announce before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything an agent needs, built by [`run`] for production and by tests and the demo with fakes.
pub struct AgentParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node.
    pub identity: Identity,
    /// Claim and release (cloud client + local network).
    pub claimer: Claimer,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Status shared with the HTTP endpoint.
    pub status: StatusHandle,
    /// Liveness beats for `/healthz` and the systemd watchdog.
    pub health: Health,
    /// `on_acquire` / `on_release` hooks.
    pub hooks: Hooks,
    /// Webhook alerts.
    pub alerter: Alerter,
    /// Watcher knobs (tests turn Pub/Sub off or delay resubscription).
    pub watch: WatchOptions,
}

/// What the agent did, as a stream for tests, the demo timeline and benchmarks.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    /// The HAVIP (empty for node-wide events).
    pub havip_id: String,
    /// The failover this belongs to (`<master>-<epoch>`, or `<master>-fence-<ms>` for a fence).
    pub failover_id: Option<String>,
    /// Monotonic time.
    pub at: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
    /// What happened.
    pub kind: AgentEventKind,
}

/// The kinds of [`AgentEvent`].
#[derive(Debug, Clone)]
pub enum AgentEventKind {
    /// A Sentinel event as the watcher received it.
    Sentinel(ObservedEvent),
    /// A new decision (logged only when it changes).
    Decision {
        /// The configuration acted on.
        config: Option<MasterConfig>,
        /// This node should hold the VIP.
        desired: bool,
        /// A majority of Sentinels is reachable.
        majority: bool,
        /// This node is fencing itself.
        fence: bool,
        /// The actions.
        actions: Vec<Action>,
    },
    /// A claim step.
    Claim(Step),
    /// A claim finished.
    Claimed {
        /// The cloud confirmed the move.
        confirmed: bool,
        /// GARP frames sent.
        frames: u32,
        /// From decision to the end of the claim.
        took: Duration,
    },
    /// A claim failed locally.
    ClaimFailed {
        /// The error.
        error: String,
    },
    /// The VIP was removed.
    Released {
        /// Why.
        reason: String,
    },
    /// Writes on the local Redis were paused.
    Paused,
    /// The pause was lifted.
    Unpaused,
}

/// A running agent. Dropping it without [`Agent::shutdown`] aborts its tasks (keeping every VIP as is).
pub struct Agent {
    watcher: Option<Watcher>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    events: broadcast::Sender<AgentEvent>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl Agent {
    /// Starts the watcher and one task per `[[havip]]`. Must be called inside a tokio runtime.
    pub fn start(parts: AgentParts) -> Agent {
        let (events, _) = broadcast::channel(4096);
        Self::start_with_events(parts, events)
    }

    /// [`Agent::start`], publishing on a given channel (so a caller can subscribe before anything happens).
    pub fn start_with_events(parts: AgentParts, events: broadcast::Sender<AgentEvent>) -> Agent {
        let cfg = parts.config.clone();
        let masters: Vec<String> = cfg.havips.iter().map(|h| h.master.clone()).collect();
        let (watcher, snaps) = Watcher::spawn_with(&cfg.sentinel, masters, parts.watch.clone());
        let (stop, _) = watch::channel(false);
        parts.status.update(|r| {
            *r = StatusReport {
                node: hostname(),
                instance_id: parts.identity.instance_id.clone(),
                address: parts.identity.address.to_string(),
                sentinels_reachable: 0,
                sentinels_total: cfg.sentinel.addresses.len(),
                havips: cfg
                    .havips
                    .iter()
                    .map(|h| HavipStatus {
                        havip_id: h.havip_id.clone(),
                        master: h.master.clone(),
                        vip: h.vip.to_string(),
                        ..HavipStatus::default()
                    })
                    .collect(),
            }
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(watch_monitor(
            snaps.clone(),
            watcher.events(),
            events.clone(),
            parts.metrics.clone(),
            parts.status.clone(),
            parts.health.clone(),
            cfg.sentinel.poll_interval.get(),
            stop.subscribe(),
        )));
        let fence_opts = cfg.redis.as_ref().filter(|r| r.pause_writes).map(|r| {
            let mut opts = ConnectOptions::sentinel(&cfg.sentinel);
            opts.username = r.username.clone();
            opts.password = r.password.clone();
            if !r.tls {
                opts.tls = None;
            }
            (opts, r.address.clone(), r.pause.get())
        });
        for h in &cfg.havips {
            let task = HavipTask::new(h.clone(), &parts, fence_opts.clone(), events.clone());
            tasks.push(tokio::spawn(task.run(snaps.clone(), stop.subscribe())));
        }
        Agent {
            watcher: Some(watcher),
            tasks,
            stop,
            events,
        }
    }

    /// Subscribes to what the agent does.
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// The Sentinel watcher.
    pub fn watcher(&self) -> &Watcher {
        self.watcher.as_ref().expect("watcher runs until shutdown")
    }

    /// Stops every task, applying `agent.on_shutdown` to held VIPs, and closes the Sentinel connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.watcher.take();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Follows the watcher for node-wide things: reachability gauges, status, the watch's health beat, and
/// forwarding Sentinel events to the agent's event stream.
#[allow(clippy::too_many_arguments)]
async fn watch_monitor(
    mut snaps: watch::Receiver<Arc<Snapshot>>,
    mut sentinel_events: broadcast::Receiver<ObservedEvent>,
    events: broadcast::Sender<AgentEvent>,
    metrics: Metrics,
    status: StatusHandle,
    health: Health,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = snaps.changed() => if r.is_err() { return },
            ev = sentinel_events.recv() => match ev {
                Ok(ev) => {
                    let _ = events.send(AgentEvent {
                        havip_id: String::new(),
                        failover_id: None,
                        at: Instant::now(),
                        wall: ev.wall,
                        kind: AgentEventKind::Sentinel(ev),
                    });
                    continue;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "event forwarder lagged behind sentinel events");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = interval.tick() => {}
        }
        let snap = snaps.borrow_and_update().clone();
        let reachable = snap.reachable();
        metrics.set_sentinels_reachable(reachable, snap.total);
        status.update(|r| {
            r.sentinels_reachable = reachable;
            r.sentinels_total = snap.total;
        });
        // The watch is alive while this follower of its snapshots runs.
        health.beat_watch();
    }
}

/// Results of work a HAVIP task spawned.
enum Done {
    Claim {
        seq: u64,
        result: Result<ClaimOutcome, ClaimError>,
    },
    Verify {
        result: Result<HaVip, CloudError>,
    },
    Pause {
        unpause: bool,
        ok: bool,
    },
}

struct RunningClaim {
    seq: u64,
    abort: tokio::task::AbortHandle,
    config: MasterConfig,
    decided_at: Instant,
}

struct HavipTask {
    h: HavipConfig,
    cfg: Arc<Config>,
    me: IpAddr,
    node: String,
    claimer: Claimer,
    metrics: Metrics,
    status: StatusHandle,
    health: Health,
    hooks: Hooks,
    alerter: Alerter,
    events: broadcast::Sender<AgentEvent>,
    fence_opts: Option<(ConnectOptions, Option<String>, Duration)>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,

    started: Instant,
    remembered: Option<MasterConfig>,
    known_down_after: Option<Duration>,
    bound: bool,
    cloud: CloudHolder,
    cloud_holder_id: Option<String>,
    in_range: bool,
    claimed_epoch: Option<u64>,
    claim: Option<RunningClaim>,
    claim_seq: u64,
    claim_failures: u32,
    next_claim_at: Option<Instant>,
    paused: bool,
    last_pause: Option<Instant>,
    pause_in_flight: bool,
    verify_in_flight: bool,
    last_verify: Option<Instant>,
    last_refresh: Instant,
    last_drift_check: Instant,
    failover_id: Option<String>,
    last_decision: Option<Decision>,
    last_switch: Option<SystemTime>,
}

impl HavipTask {
    fn new(
        h: HavipConfig,
        parts: &AgentParts,
        fence_opts: Option<(ConnectOptions, Option<String>, Duration)>,
        events: broadcast::Sender<AgentEvent>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Self {
            h,
            cfg: parts.config.clone(),
            me: parts.identity.address,
            node: parts.identity.instance_id.clone(),
            claimer: parts.claimer.clone(),
            metrics: parts.metrics.clone(),
            status: parts.status.clone(),
            health: parts.health.clone(),
            hooks: parts.hooks.clone(),
            alerter: parts.alerter.clone(),
            events,
            fence_opts,
            done_tx,
            done_rx,
            started: now,
            remembered: None,
            known_down_after: None,
            bound: false,
            cloud: CloudHolder::Unknown,
            cloud_holder_id: None,
            in_range: false,
            claimed_epoch: None,
            claim: None,
            claim_seq: 0,
            claim_failures: 0,
            next_claim_at: None,
            paused: false,
            last_pause: None,
            pause_in_flight: false,
            verify_in_flight: false,
            last_verify: None,
            last_refresh: now,
            last_drift_check: now,
            failover_id: None,
            last_decision: None,
            last_switch: None,
        }
    }

    fn emit(&self, kind: AgentEventKind) {
        let _ = self.events.send(AgentEvent {
            havip_id: self.h.havip_id.clone(),
            failover_id: self.failover_id.clone(),
            at: Instant::now(),
            wall: SystemTime::now(),
            kind,
        });
    }

    fn alert(&self, event: AlertKind, message: String) {
        self.alerter.notify(Alert {
            event,
            havip_id: self.h.havip_id.clone(),
            vip: self.h.vip.to_string(),
            master: self.h.master.clone(),
            node: self.node.clone(),
            failover_id: self.failover_id.clone(),
            message,
            at: SystemTime::now(),
        });
    }

    fn hook_ctx(&self, result: impl Into<String>) -> HookContext {
        HookContext {
            havip: self.h.havip_id.clone(),
            vip: self.h.vip.to_string(),
            master: self.h.master.clone(),
            result: result.into(),
            failover_id: self.failover_id.clone().unwrap_or_default(),
        }
    }

    async fn run(
        mut self,
        mut snaps: watch::Receiver<Arc<Snapshot>>,
        mut stop: watch::Receiver<bool>,
    ) {
        match self.claimer.net().is_bound(self.h.vip).await {
            Ok(b) => self.bound = b,
            Err(e) => {
                error!(havip = %self.h.havip_id, error = %e, "cannot read the interface's addresses")
            }
        }
        info!(havip = %self.h.havip_id, master = %self.h.master, vip = %self.h.vip, bound = self.bound, "watching havip");
        self.spawn_verify(true);
        loop {
            let snap = snaps.borrow_and_update().clone();
            let wake = self.next_wake(&snap);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = self.done_rx.recv() => self.finished(done).await,
                r = snaps.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(wake) => {}
            }
            let snap = snaps.borrow().clone();
            self.timers(&snap).await;
            self.step(&snap).await;
            self.health.beat_main();
        }
        self.shutdown().await;
    }

    /// When the loop must wake even without news: the fence deadline, pause renewals, timers.
    fn next_wake(&self, snap: &Snapshot) -> Instant {
        let now = Instant::now();
        let mut wake = now + self.cfg.sentinel.poll_interval.get();
        if !snap.has_majority()
            && let Some(after) = self.fence_after(snap)
        {
            let at = self.majority_last_seen(snap) + after;
            if at > now {
                wake = wake.min(at);
            }
        }
        if self.paused
            && let Some((_, _, pause)) = &self.fence_opts
            && let Some(last) = self.last_pause
        {
            wake = wake.min(last + *pause / 2);
        }
        if let Some(at) = self.next_claim_at {
            wake = wake.min(at.max(now));
        }
        wake.max(now + Duration::from_millis(1))
    }

    /// The moment the majority of Sentinels was last seen: the (n/2+1)-th most recent answer, counting
    /// reachable Sentinels as answering now. Sentinels that stalled stop advancing their `last_ok`, so
    /// this is exact for a lost majority.
    fn majority_last_seen(&self, snap: &Snapshot) -> Instant {
        let now = Instant::now();
        let std_now = std::time::Instant::now();
        let mut seen: Vec<Instant> = snap
            .sentinels
            .iter()
            .map(|s| {
                if s.reachable {
                    now
                } else {
                    match s.last_ok {
                        Some(t) => now
                            .checked_sub(std_now.saturating_duration_since(t))
                            .unwrap_or(self.started),
                        None => self.started,
                    }
                }
            })
            .map(|t| t.max(self.started))
            .collect();
        seen.sort_unstable_by(|a, b| b.cmp(a));
        let k = snap.total / 2;
        seen.get(k).copied().unwrap_or(self.started)
    }

    fn fence_after(&self, snap: &Snapshot) -> Option<Duration> {
        match self.cfg.sentinel.fence_after {
            FenceAfter::Hold => None,
            FenceAfter::After(d) => Some(d),
            FenceAfter::Auto => Some(
                snap.min_down_after(&self.h.master)
                    .or(self.known_down_after)
                    .map(|d| d / 3)
                    .unwrap_or(FENCE_AFTER_FALLBACK),
            ),
        }
    }

    fn observe(&mut self, snap: &Snapshot) -> Observation {
        let reported = snap.newest(&self.h.master).map(|n| MasterConfig {
            ip: n.ip,
            port: n.port,
            epoch: n.epoch,
        });
        if let Some(d) = snap.min_down_after(&self.h.master) {
            self.known_down_after = Some(d);
        }
        let majority = snap.has_majority();
        let cut_off_for = if majority {
            Duration::ZERO
        } else {
            Instant::now().saturating_duration_since(self.majority_last_seen(snap))
        };
        let obs = Observation {
            majority,
            reported,
            remembered: self.remembered,
            cut_off_for,
            fence_after: self.fence_after(snap),
            bound: self.bound,
            cloud: self.cloud,
            claimed_epoch: self.claimed_epoch,
            // A claim that failed waits for its retry time as if it were still running.
            claiming: self.claim.is_some()
                || self.next_claim_at.is_some_and(|t| Instant::now() < t),
            paused: self.paused,
            redis_fence: self.fence_opts.is_some(),
        };
        // Remember the newest configuration seen, and start a new failover id when it changes.
        if let Some(r) = reported {
            let newer = self.remembered.is_none_or(|m| r.epoch > m.epoch);
            if newer {
                if self.remembered.is_some() {
                    self.last_switch = Some(SystemTime::now());
                    self.metrics
                        .set_last_switch(&self.h.havip_id, SystemTime::now());
                }
                self.failover_id = Some(format!("{}-{}", self.h.master, r.epoch));
                self.remembered = Some(r);
            }
        }
        obs
    }

    async fn step(&mut self, snap: &Snapshot) {
        let obs = self.observe(snap);
        let decision = plan(self.me, &obs);
        if decision.fence && self.last_decision.is_none_or(|d| !d.fence) {
            self.failover_id = Some(format!(
                "{}-fence-{}",
                self.h.master,
                crate::clock::unix_seconds(SystemTime::now())
            ));
        }
        if self.last_decision != Some(decision) {
            let actions = decision.actions.to_vec();
            info!(
                havip = %self.h.havip_id,
                master = %self.h.master,
                failover_id = self.failover_id.as_deref().unwrap_or(""),
                epoch = decision.config.map(|c| c.epoch),
                master_addr = ?decision.config.map(|c| c.ip),
                majority = obs.majority,
                reachable = snap.reachable(),
                total = snap.total,
                desired = decision.desired,
                fence = decision.fence,
                bound = self.bound,
                cloud = ?self.cloud,
                actions = ?actions,
                "decision"
            );
            self.emit(AgentEventKind::Decision {
                config: decision.config,
                desired: decision.desired,
                majority: obs.majority,
                fence: decision.fence,
                actions,
            });
            self.last_decision = Some(decision);
        }
        for action in decision.actions.iter() {
            self.act(action).await;
        }
        self.publish(&decision);
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Claim { config } => self.start_claim(config, "claim"),
            Action::Reannounce => {
                if let Some(config) = self.remembered {
                    self.alert(
                        AlertKind::CloudMismatch,
                        format!(
                            "cloud holder is {} while this node holds the vip: announcing again",
                            self.cloud_holder_id.as_deref().unwrap_or("nobody")
                        ),
                    );
                    self.start_claim(config, "reannounce");
                }
            }
            Action::AbortClaim => {
                if let Some(c) = self.claim.take() {
                    c.abort.abort();
                    info!(havip = %self.h.havip_id, failover_id = self.failover_id.as_deref().unwrap_or(""), "aborted a running claim: this node is no longer the desired holder");
                }
                match self.claimer.net().is_bound(self.h.vip).await {
                    Ok(b) => self.bound = b,
                    Err(e) => {
                        warn!(havip = %self.h.havip_id, error = %e, "cannot read the interface's addresses")
                    }
                }
            }
            Action::Release { reason } => self.release(reason).await,
            Action::PauseWrites => self.pause(false),
            Action::Unpause => self.pause(true),
        }
    }

    fn start_claim(&mut self, config: MasterConfig, why: &'static str) {
        if self.claim.is_some() {
            return;
        }
        self.claim_seq += 1;
        let seq = self.claim_seq;
        let decided_at = Instant::now();
        let claimer = self.claimer.clone();
        let h = self.h.clone();
        let done = self.done_tx.clone();
        let events = self.events.clone();
        let failover_id = self.failover_id.clone();
        let havip_id = self.h.havip_id.clone();
        let progress: Progress = Arc::new(move |ev| {
            info!(havip = %ev.havip_id, failover_id = failover_id.as_deref().unwrap_or(""), step = ?ev.step, "claim step");
            let _ = events.send(AgentEvent {
                havip_id: havip_id.clone(),
                failover_id: failover_id.clone(),
                at: ev.at,
                wall: ev.wall,
                kind: AgentEventKind::Claim(ev.step.clone()),
            });
        });
        let opts = ClaimOptions {
            deadline: decided_at + self.cfg.claim.deadline.get(),
            known_in_range: self.in_range,
            progress: Some(progress),
        };
        let lock_dir = self.cfg.claim.lock_dir.clone();
        let confirm_role = self
            .cfg
            .sentinel
            .confirm_role
            .then(|| ConnectOptions::sentinel(&self.cfg.sentinel));
        info!(
            havip = %self.h.havip_id,
            failover_id = self.failover_id.as_deref().unwrap_or(""),
            epoch = config.epoch,
            why,
            "claiming"
        );
        let task = tokio::spawn(async move {
            if let Some(mut copts) = confirm_role {
                copts.password = None;
                copts.username = None;
                match crate::sentinel::conn::confirm_role(config.ip, config.port, &copts).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = done.send(Done::Claim {
                            seq,
                            result: Err(ClaimError::Lock {
                                havip: h.havip_id.clone(),
                                message: "ROLE on this node's redis does not say master yet".into(),
                            }),
                        });
                        return;
                    }
                    Err(e) => {
                        warn!(havip = %h.havip_id, error = %e, "could not confirm the role; claiming anyway")
                    }
                }
            }
            let result = match HavipLock::acquire(&lock_dir, &h.havip_id, opts.deadline).await {
                Ok(_lock) => claimer.claim(&h, opts).await,
                Err(e) => Err(e),
            };
            let _ = done.send(Done::Claim { seq, result });
        });
        self.claim = Some(RunningClaim {
            seq,
            abort: task.abort_handle(),
            config,
            decided_at,
        });
    }

    async fn finished(&mut self, done: Done) {
        match done {
            Done::Claim { seq, result } => {
                let Some(claim) = self.claim.take_if(|c| c.seq == seq) else {
                    return; // an aborted claim's late report
                };
                let took = claim.decided_at.elapsed();
                let fid = self.failover_id.clone().unwrap_or_default();
                match result {
                    Ok(out) => {
                        self.bound = true;
                        self.claim_failures = 0;
                        self.next_claim_at = None;
                        self.claimed_epoch = Some(claim.config.epoch);
                        self.last_refresh = Instant::now();
                        if out.confirmed {
                            self.cloud = CloudHolder::ThisNode;
                            self.cloud_holder_id = Some(self.claimer.instance_id().to_owned());
                            self.in_range = true;
                            self.last_verify = Some(Instant::now());
                        } else {
                            self.cloud = CloudHolder::Unknown;
                        }
                        if out.associated {
                            self.in_range = true;
                        }
                        let ok = out.confirmed;
                        self.metrics.observe_claim(&self.h.havip_id, took, ok);
                        self.metrics
                            .add_garp_frames(&self.h.havip_id, out.frames as u64);
                        self.metrics
                            .set_last_switch(&self.h.havip_id, SystemTime::now());
                        self.last_switch = Some(SystemTime::now());
                        let result = match (&out.cloud_error, out.confirmed) {
                            (_, true) => "confirmed".to_owned(),
                            (Some(e), false) => format!("unconfirmed: {e}"),
                            (None, false) => "unconfirmed: the cloud did not name this instance before the deadline".to_owned(),
                        };
                        info!(
                            havip = %self.h.havip_id,
                            failover_id = %fid,
                            confirmed = out.confirmed,
                            already_held = out.already_held,
                            associated = out.associated,
                            frames = out.frames,
                            took_ms = took.as_secs_f64() * 1e3,
                            "claimed"
                        );
                        self.emit(AgentEventKind::Claimed {
                            confirmed: out.confirmed,
                            frames: out.frames,
                            took,
                        });
                        if !out.already_held {
                            self.hooks.acquired(self.hook_ctx(result.clone()));
                            if ok {
                                self.alert(
                                    AlertKind::Acquired,
                                    format!("vip {} is now on this node", self.h.vip),
                                );
                            } else {
                                self.alert(
                                    AlertKind::CloudUnconfirmed,
                                    format!("vip bound and announced locally; {result}"),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        self.claim_failures += 1;
                        let backoff = Duration::from_millis(250)
                            .saturating_mul(1 << self.claim_failures.min(6))
                            .min(Duration::from_secs(10));
                        self.next_claim_at = Some(Instant::now() + backoff);
                        error!(havip = %self.h.havip_id, failover_id = %fid, error = %e, retry_in_ms = backoff.as_millis() as u64, "claim failed");
                        self.metrics.observe_claim(&self.h.havip_id, took, false);
                        self.emit(AgentEventKind::ClaimFailed {
                            error: e.to_string(),
                        });
                        self.alert(AlertKind::ClaimFailed, e.to_string());
                        if let Ok(b) = self.claimer.net().is_bound(self.h.vip).await {
                            self.bound = b;
                        }
                    }
                }
            }
            Done::Verify { result } => {
                self.verify_in_flight = false;
                self.last_verify = Some(Instant::now());
                match result {
                    Ok(h) => {
                        self.in_range = self.claimer.may_move(&h);
                        let mine = h.instance_id.as_deref() == Some(self.claimer.instance_id());
                        self.cloud = if mine {
                            CloudHolder::ThisNode
                        } else {
                            CloudHolder::Elsewhere
                        };
                        self.cloud_holder_id = h.instance_id.clone();
                        debug!(havip = %self.h.havip_id, holder = ?h.instance_id, in_range = self.in_range, "cloud view");
                    }
                    Err(e) => {
                        warn!(havip = %self.h.havip_id, error = %e, "could not read the havip from the cloud");
                        self.cloud = CloudHolder::Unknown;
                    }
                }
            }
            Done::Pause { unpause, ok } => {
                self.pause_in_flight = false;
                if unpause && ok {
                    self.paused = false;
                    self.emit(AgentEventKind::Unpaused);
                } else if !unpause && ok {
                    self.emit(AgentEventKind::Paused);
                }
            }
        }
    }

    /// Reads the HAVIP from the cloud in the background. At start (`prepare`), an inclusive-scope node also
    /// adds itself to the drift range, so that a later failover needs no API call before its first GARP.
    fn spawn_verify(&mut self, prepare: bool) {
        let Some(cloud) = self.claimer.cloud().cloned() else {
            return;
        };
        if self.verify_in_flight {
            return;
        }
        self.verify_in_flight = true;
        let done = self.done_tx.clone();
        let id = self.h.havip_id.clone();
        let timeout = self.cfg.cloud.timeout.get();
        let claimer = self.claimer.clone();
        let inclusive = self.h.scope == Scope::Inclusive;
        let ty = self.cfg.node.instance_type;
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout * 3;
            let mut result = cloud.describe_havip(&id, deadline).await;
            if prepare
                && inclusive
                && let Ok(h) = &result
                && !claimer.may_move(h)
            {
                match cloud
                    .associate(&id, claimer.instance_id(), ty, deadline)
                    .await
                {
                    Ok(()) => {
                        info!(havip = %id, instance = %claimer.instance_id(), "added this instance to the drift range ahead of any failover (scope inclusive)");
                        result = cloud.describe_havip(&id, deadline).await;
                    }
                    Err(e) => {
                        warn!(havip = %id, error = %e, "could not add this instance to the drift range in advance; a claim will try again")
                    }
                }
            }
            let _ = done.send(Done::Verify { result });
        });
    }

    /// Periodic work: local drift repair, re-announcing while holding, verifying the cloud holder.
    async fn timers(&mut self, snap: &Snapshot) {
        let now = Instant::now();
        let holding = self.bound && self.claim.is_none() && self.claimed_epoch.is_some();
        if now.duration_since(self.last_drift_check) >= self.cfg.sentinel.poll_interval.get()
            && self.claim.is_none()
        {
            self.last_drift_check = now;
            match self.claimer.net().is_bound(self.h.vip).await {
                Ok(b) if b != self.bound => {
                    warn!(havip = %self.h.havip_id, vip = %self.h.vip, bound = b, "local binding changed behind the agent's back");
                    self.bound = b;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(havip = %self.h.havip_id, error = %e, "cannot read the interface's addresses")
                }
            }
        }
        let refresh = self.cfg.announce.refresh_interval.get();
        if holding
            && !refresh.is_zero()
            && now.duration_since(self.last_refresh) >= refresh
            && snap.has_majority()
        {
            self.last_refresh = now;
            match self.claimer.net().announce_round(self.h.vip.addr).await {
                Ok(frames) => self
                    .metrics
                    .add_garp_frames(&self.h.havip_id, frames as u64),
                Err(e) => warn!(havip = %self.h.havip_id, error = %e, "re-announce failed"),
            }
        }
        let verify_due = self
            .last_verify
            .is_none_or(|t| now.duration_since(t) >= self.cfg.agent.verify_interval.get());
        if holding && verify_due {
            self.spawn_verify(false);
        }
    }

    async fn release(&mut self, reason: ReleaseReason) {
        let fid = self.failover_id.clone().unwrap_or_default();
        // Serialise with a concurrent migrate-havip, but never let the lock hold up a release for long.
        let _lock = HavipLock::acquire(
            &self.cfg.claim.lock_dir,
            &self.h.havip_id,
            Instant::now() + Duration::from_millis(500),
        )
        .await
        .inspect_err(|e| warn!(havip = %self.h.havip_id, error = %e, "releasing without the lock"))
        .ok();
        match self.claimer.release(&self.h).await {
            Ok(change) => {
                self.bound = false;
                self.claimed_epoch = None;
                self.cloud = CloudHolder::Unknown;
                info!(havip = %self.h.havip_id, failover_id = %fid, reason = reason.as_str(), removed = change == Change::Applied, "released");
                self.emit(AgentEventKind::Released {
                    reason: reason.as_str().to_owned(),
                });
                if reason == ReleaseReason::Fenced {
                    self.metrics.inc_fence_release(&self.h.havip_id);
                }
                if change == Change::Applied {
                    self.hooks.released(self.hook_ctx(reason.as_str()));
                    let kind = match reason {
                        ReleaseReason::Fenced => AlertKind::Fenced,
                        ReleaseReason::Demoted => AlertKind::Released,
                    };
                    self.alert(
                        kind,
                        format!(
                            "vip {} removed from this node ({})",
                            self.h.vip,
                            reason.as_str()
                        ),
                    );
                }
            }
            Err(e) => {
                error!(havip = %self.h.havip_id, failover_id = %fid, error = %e, "release failed");
                self.alert(AlertKind::ReleaseFailed, e.to_string());
            }
        }
    }

    /// Pauses writes (renewing at half the pause length while still needed) or lifts the pause.
    fn pause(&mut self, unpause: bool) {
        let Some((opts, addr, pause)) = self.fence_opts.clone() else {
            return;
        };
        if self.pause_in_flight {
            return;
        }
        let now = Instant::now();
        if !unpause
            && self.paused
            && self
                .last_pause
                .is_some_and(|t| now.duration_since(t) < pause / 2)
        {
            return;
        }
        let port = self
            .remembered
            .filter(|c| c.ip == self.me)
            .map(|c| c.port)
            .unwrap_or(6379);
        let addr = addr.unwrap_or_else(|| std::net::SocketAddr::new(self.me, port).to_string());
        let fence = RedisFence::new(opts, addr, pause);
        if !unpause {
            self.paused = true;
            self.last_pause = Some(now);
        }
        self.pause_in_flight = true;
        let done = self.done_tx.clone();
        let id = self.h.havip_id.clone();
        let fid = self.failover_id.clone().unwrap_or_default();
        tokio::spawn(async move {
            let r = if unpause {
                fence.unpause().await
            } else {
                fence.pause_writes().await
            };
            match &r {
                Ok(()) if unpause => {
                    info!(havip = %id, failover_id = %fid, redis = %fence.addr(), "lifted the write pause: the majority names this node again")
                }
                Ok(()) => {
                    info!(havip = %id, failover_id = %fid, redis = %fence.addr(), pause_ms = fence.pause_length().as_millis() as u64, "paused writes on the local redis: cut off from the sentinel majority")
                }
                Err(e) => {
                    warn!(havip = %id, failover_id = %fid, error = %e, "redis fence command failed")
                }
            }
            let _ = done.send(Done::Pause {
                unpause,
                ok: r.is_ok(),
            });
        });
    }

    fn publish(&self, d: &Decision) {
        let id = &self.h.havip_id;
        self.metrics.set_desired(id, d.desired);
        self.metrics.set_local_holder(id, self.bound);
        let cloud_matches = match self.cloud {
            CloudHolder::Unknown => None,
            CloudHolder::ThisNode => Some(self.bound),
            CloudHolder::Elsewhere => Some(!self.bound),
        };
        self.metrics.set_cloud_match(id, cloud_matches);
        let majority_master = d
            .config
            .map(|c| std::net::SocketAddr::new(c.ip, c.port).to_string());
        self.status.update_havip(id, |s| {
            s.majority_master = majority_master;
            s.epoch = d.config.map(|c| c.epoch);
            s.desired_holder = d.desired;
            s.local_bound = self.bound;
            s.cloud_holder = self.cloud_holder_id.clone();
            s.cloud_matches = cloud_matches;
            s.last_switch = self.last_switch.map(rfc3339);
            s.fenced = d.fence;
            s.failover_id = self.failover_id.clone();
        });
    }

    async fn shutdown(&mut self) {
        if let Some(c) = self.claim.take() {
            // Let a running claim finish its first announce rather than leave a bound, unannounced VIP.
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            loop {
                match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                    Ok(Some(Done::Claim { seq, result })) if seq == c.seq => {
                        if result.is_ok() {
                            self.bound = true;
                        }
                        break;
                    }
                    Ok(Some(_)) => continue,
                    _ => {
                        c.abort.abort();
                        break;
                    }
                }
            }
        }
        match self.cfg.agent.on_shutdown {
            OnShutdown::Keep => {
                info!(havip = %self.h.havip_id, bound = self.bound, "stopping: keeping the vip as it is (agent.on_shutdown = keep)");
            }
            OnShutdown::Release => match self.claimer.release(&self.h).await {
                Ok(change) => {
                    info!(havip = %self.h.havip_id, removed = change == Change::Applied, "stopping: released the vip (agent.on_shutdown = release)")
                }
                Err(e) => {
                    error!(havip = %self.h.havip_id, error = %e, "stopping: could not release the vip")
                }
            },
        }
    }
}

/// Why `havip-agent run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A problem that a restart will not fix (config, privileges, interface).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// A problem that may go away (metadata unreachable at start).
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

/// `havip-agent run`: builds the real parts, starts the agent and the HTTP endpoint, talks to systemd
/// (`READY=1`, `WATCHDOG=1` from the main loop, `STOPPING=1`), and runs until SIGTERM or SIGINT.
pub async fn run(config_path: &std::path::Path) -> Result<(), StartError> {
    use anyhow::Context;
    let perm = |e: anyhow::Error| StartError::Permanent(e);
    let cfg = Arc::new(Config::load(config_path).map_err(|e| perm(e.into()))?);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = crate::clock::system();
    let metadata =
        crate::metadata::MetadataClient::new(&cfg.cloud.metadata_endpoint, Duration::from_secs(2))
            .map_err(|e| perm(e.into()))?;
    let identity = crate::node::resolve_identity(&cfg, &metadata)
        .await
        .context("resolving this node's identity")
        .map_err(StartError::Transient)?;
    crate::net::require_capabilities().map_err(|e| perm(e.into()))?;
    let net = crate::net::KernelNet::open(&cfg.node.interface)
        .await
        .map_err(|e| perm(e.into()))?;
    let metrics = Metrics::new();
    let env = |k: &str| std::env::var(k).ok();
    let cloud = match crate::credentials::CredentialProvider::resolve(
        &env,
        &cfg.cloud,
        &metadata,
        clock.clone(),
    )
    .await
    {
        Ok(creds) => {
            info!(source = %creds.source(), "cloud credentials resolved");
            Some(
                crate::cloud::VpcClient::new(&cfg.cloud, creds, clock)
                    .map_err(|e| perm(e.into()))?
                    .with_observer(Arc::new(metrics.clone())),
            )
        }
        Err(e) if e.is_retryable() => {
            // The metadata service is down right now: start anyway (local bind and announce work) and
            // look the role up again on each API call.
            warn!(error = %e, "cloud credentials not available yet; the cam role will be looked up on first use");
            let creds =
                crate::credentials::CredentialProvider::deferred_role(&metadata, clock.clone());
            Some(
                crate::cloud::VpcClient::new(&cfg.cloud, creds, clock)
                    .map_err(|e| perm(e.into()))?
                    .with_observer(Arc::new(metrics.clone())),
            )
        }
        Err(e) => {
            error!(error = %e, "no cloud credentials: running local-only (bind and announce); the drift range and moves cannot be confirmed");
            None
        }
    };
    let claimer = Claimer::new(
        cloud,
        Arc::new(net),
        identity.instance_id.clone(),
        cfg.node.instance_type,
        cfg.announce.clone(),
        cfg.cloud.timeout.get(),
    );
    let status = StatusHandle::new(StatusReport::default());
    let health = Health::new(Duration::from_secs(10).max(cfg.sentinel.poll_interval.get() * 5));
    let parts = AgentParts {
        config: cfg.clone(),
        identity: identity.clone(),
        claimer,
        metrics: metrics.clone(),
        status: status.clone(),
        health: health.clone(),
        hooks: Hooks::with_metrics(&cfg.hooks, metrics.clone()),
        alerter: Alerter::new(&cfg.alerts, metrics.clone()),
        watch: WatchOptions::default(),
    };
    info!(
        instance = %identity.instance_id,
        address = %identity.address,
        interface = %cfg.node.interface,
        havips = cfg.havips.len(),
        sentinels = cfg.sentinel.addresses.len(),
        "starting havip-agent"
    );
    let hooks = parts.hooks.clone();
    let alerter = parts.alerter.clone();
    let agent = Agent::start(parts);
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = match cfg.metrics.listen {
        Some(addr) => Some(
            crate::http::serve(
                addr,
                metrics.clone(),
                status.clone(),
                health.clone(),
                async move {
                    let _ = http_stop_rx.await;
                },
            )
            .await
            .map_err(|e| perm(e.into()))?,
        ),
        None => None,
    };
    // READY=1 once the Sentinel watch is up: the first Sentinel answered (or a bounded wait passed, so a
    // deployment whose Sentinels are all down still starts and reports it in /status and /healthz).
    {
        let mut snaps = agent.watcher().snapshots();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            snaps.wait_for(|s| s.reachable() > 0),
        )
        .await;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")
        .map_err(perm)?;
    let watchdog = sd_notify::watchdog_enabled();
    let ping_every = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(5));
    let mut tick = tokio::time::interval(ping_every.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("sigterm: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { info!("sigint: stopping"); break; }
            _ = tick.tick() => {
                // The watchdog is fed only while the HAVIP loops are alive; a stuck loop gets restarted.
                if watchdog.is_some() && health.is_healthy() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    agent.shutdown().await;
    let _ = http_stop_tx.send(());
    if let Some(h) = http {
        let _ = h.task.await;
    }
    hooks.flush(Duration::from_secs(5)).await;
    alerter.flush(Duration::from_secs(5)).await;
    info!("stopped");
    Ok(())
}

impl crate::cloud::ApiObserver for Metrics {
    fn observe(&self, action: &str, elapsed: Duration, error_code: Option<&str>) {
        self.observe_api(action, elapsed, error_code);
    }
}
