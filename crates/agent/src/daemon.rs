//! `havip-agent run`: the level-triggered loop that keeps each HAVIP on Sentinel's current master.
//!
//! Owns the per-HAVIP tasks and their timing: each task follows the Sentinel watcher's snapshots, feeds its
//! [`HavipMachine`] (the decision state shared with `migrate-havip`), and carries the planned actions out
//! with the shared [`Executor`]; timers re-announce, verify the cloud holder and repair local drift. It also
//! owns status, metrics, hooks and alerts for what it did, and the per-task health beats. It does not parse
//! Sentinel replies (`sentinel`), decide (`reconcile`), sign requests (`cloud`) or touch the kernel (`net`).
//!
//! Every HAVIP has its own task, so a slow cloud call for one never delays another; within a task, every
//! slow thing (claim, cloud verify, Redis pause) runs in a spawned task that reports back on a channel, so
//! the loop itself never waits on the network and reacts to the next snapshot at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::act::{Executor, FenceSetup};
use crate::alerts::{Alert, AlertKind, Alerter};
use crate::claim::{ClaimError, ClaimOptions, ClaimOutcome, Claimer, Progress, Step};
use crate::cloud::{CloudError, EipBound, EipError, EipState, HaVip, eip_state};
use crate::config::{Config, HavipConfig, OnShutdown, Scope};
use crate::hooks::{HookContext, Hooks};
use crate::metrics::Metrics;
use crate::net::Change;
use crate::node::Identity;
use crate::reconcile::{
    Action, CloudHolder, Decision, FORGET_AFTER, HavipMachine, Local, MasterConfig, Policy,
    ReleaseReason,
};
use crate::sentinel::MasterView;
use crate::sentinel::conn::ConnectOptions;
use crate::sentinel::snapshot::Snapshot;
use crate::sentinel::watcher::{ObservedEvent, WatchOptions, Watcher};
use crate::status::{Beat, HavipStatus, Health, StatusHandle, StatusReport, rfc3339};

/// How long a stopping agent lets a running claim finish its first announce before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long one attempt to bind the configured EIP may take (call, task poll and re-reads together).
const EIP_ATTEMPT: Duration = Duration::from_secs(60);
/// The wait before retrying an EIP bind that failed with an error that may heal; doubled per failure up to
/// [`EIP_RETRY_CAP`]. Long: nothing about a failover waits for the EIP.
const EIP_RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two EIP bind attempts.
const EIP_RETRY_CAP: Duration = Duration::from_secs(300);
/// Slots of the agent's event channel (see `Agent::start`).
const EVENT_CAPACITY: usize = 1024;

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
    /// A Sentinel event as the watcher received it. Boxed: it is by far the largest kind, and the channel
    /// allocates every slot at the size of the largest one when it is created.
    Sentinel(Box<ObservedEvent>),
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
        // Every slot is allocated here, whether anyone listens or not: 1024 slots of the 144-byte event
        // (the Sentinel event boxed) keep ~150 KiB resident, where 4096 slots of the
        // unboxed 248-byte event kept 1.1 MiB (issue 13, `/proc/<pid>/smaps`). 1024 still holds a whole
        // failover of 20 masters (three Sentinels' events and every HAVIP's steps) for a slow listener.
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self::start_with_events(parts, events)
    }

    /// [`Agent::start`], publishing on a given channel (so a caller can subscribe before anything happens).
    pub fn start_with_events(parts: AgentParts, events: broadcast::Sender<AgentEvent>) -> Agent {
        let cfg = parts.config.clone();
        let masters: Vec<String> = cfg.havips.iter().map(|h| h.master.clone()).collect();
        let mut watch_opts = parts.watch.clone();
        watch_opts.role = Some(ConnectOptions::role_check(&cfg));
        let sentinel_beats: Vec<Beat> = cfg
            .sentinel
            .addresses
            .iter()
            .map(|a| parts.health.register(format!("sentinel watch {a}")))
            .collect();
        watch_opts.progress = Some(Arc::new(move |i: usize| {
            if let Some(b) = sentinel_beats.get(i) {
                b.beat();
            }
        }));
        let (watcher, snaps) = Watcher::spawn_with(&cfg.sentinel, masters, watch_opts);
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
                        eip: h.eip.map(|e| e.to_string()),
                        ..HavipStatus::default()
                    })
                    .collect(),
                ..StatusReport::default()
            }
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(watch_monitor(
            snaps.clone(),
            watcher.events(),
            events.clone(),
            parts.metrics.clone(),
            parts.status.clone(),
            cfg.sentinel.poll_interval.get(),
            stop.subscribe(),
        )));
        let fence = cfg
            .redis
            .as_ref()
            .and_then(|r| FenceSetup::from_config(&cfg, parts.identity.address, r.pause.get()));
        let executor = Executor::new(
            parts
                .claimer
                .clone()
                .with_locks(&cfg.claim.lock_dir, crate::claim::LockPolicy::BestEffort),
            fence,
        );
        for h in &cfg.havips {
            let task = HavipTask::new(h.clone(), &parts, executor.clone(), events.clone());
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

/// Follows the watcher for node-wide things: reachability gauges, Sentinels that do not count, status, and
/// forwarding Sentinel events to the agent's event stream.
async fn watch_monitor(
    mut snaps: watch::Receiver<Arc<Snapshot>>,
    mut sentinel_events: broadcast::Receiver<ObservedEvent>,
    events: broadcast::Sender<AgentEvent>,
    metrics: Metrics,
    status: StatusHandle,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flagged: Vec<String> = Vec::new();
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
                        kind: AgentEventKind::Sentinel(Box::new(ev)),
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
        let outsiders = snap.outsiders();
        for s in &snap.sentinels {
            metrics.set_sentinel_uncorroborated(&s.addr, outsiders.contains(&s.addr));
        }
        for o in outsiders.iter().filter(|o| !flagged.contains(o)) {
            warn!(sentinel = %o, "sentinel does not count: its peers do not list it (another deployment under the same master name?); it cannot move the vip");
        }
        flagged = outsiders.clone();
        status.update(|r| {
            r.sentinels_reachable = reachable;
            r.sentinels_total = snap.total;
            r.sentinels_uncorroborated = outsiders;
        });
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
        /// Why the command failed (it names the Redis), or `None` when it worked.
        error: Option<String>,
    },
    Eip {
        result: Result<EipBound, EipError>,
    },
}

/// Aborts the task when dropped, so a background EIP bind never outlives its HAVIP task.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The daemon's EIP duty for one HAVIP with `eip` configured: bind it when the cloud shows the HAVIP without
/// an EIP, in the background and off the failover path; never unbind it (the EIP follows the HAVIP), never
/// replace another EIP (alert instead).
struct EipKeeper {
    want: std::net::Ipv4Addr,
    /// The last cloud view; `None` until the HAVIP was read.
    state: Option<EipState>,
    /// A bind attempt in flight.
    task: Option<AbortOnDrop>,
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this (after a failure that may heal).
    retry_at: Option<Instant>,
    /// A failure an operator must fix: no more attempts until the cloud view changes.
    gave_up: bool,
    /// The problem last alerted, so a lasting one alerts once.
    alerted: Option<String>,
}

impl EipKeeper {
    fn new(want: std::net::Ipv4Addr) -> Self {
        Self {
            want,
            state: None,
            task: None,
            failures: 0,
            retry_at: None,
            gave_up: false,
            alerted: None,
        }
    }

    /// Whether a bind attempt may start now: the cloud view is missing the EIP (or unknown), none is running,
    /// no permanent failure, and any retry wait is over.
    fn may_try(&self, now: Instant) -> bool {
        !matches!(self.state, Some(EipState::Bound | EipState::Other(_)))
            && self.task.is_none()
            && !self.gave_up
            && self.retry_at.is_none_or(|t| now >= t)
    }

    /// Records a failed attempt: the next may start after a doubling wait, or never if it cannot heal.
    fn failed(&mut self, retryable: bool, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if !retryable {
            self.gave_up = true;
            return None;
        }
        let factor = 1u32 << (self.failures - 1).min(16);
        let wait = EIP_RETRY_FIRST.saturating_mul(factor).min(EIP_RETRY_CAP);
        self.retry_at = Some(now + wait);
        Some(wait)
    }

    /// A new cloud view: a bound EIP clears the failure record; a changed view lifts a permanent failure.
    fn seen(&mut self, state: EipState) {
        if self.state.as_ref() != Some(&state) {
            self.gave_up = false;
        }
        if state == EipState::Bound {
            self.failures = 0;
            self.retry_at = None;
            self.alerted = None;
        }
        self.state = Some(state);
    }
}

struct RunningClaim {
    seq: u64,
    task: JoinHandle<()>,
    config: MasterConfig,
    decided_at: Instant,
}

struct HavipTask {
    h: HavipConfig,
    cfg: Arc<Config>,
    node: String,
    exec: Executor,
    machine: HavipMachine,
    metrics: Metrics,
    status: StatusHandle,
    beat: Beat,
    hooks: Hooks,
    alerter: Alerter,
    events: broadcast::Sender<AgentEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,

    bound: bool,
    cloud: CloudHolder,
    cloud_holder_id: Option<String>,
    in_range: bool,
    claim: Option<RunningClaim>,
    claim_seq: u64,
    pause_in_flight: bool,
    /// The last pause failed and was alerted: renewals that keep failing count, but do not alert again.
    pause_failing: bool,
    verify_in_flight: bool,
    last_verify: Option<Instant>,
    last_refresh: Instant,
    last_drift_check: Instant,
    last_decision: Option<Decision>,
    last_switch: Option<SystemTime>,
    eip: Option<EipKeeper>,
}

impl HavipTask {
    fn new(
        h: HavipConfig,
        parts: &AgentParts,
        exec: Executor,
        events: broadcast::Sender<AgentEvent>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let cfg = parts.config.clone();
        let h_eip = h.eip;
        let machine = HavipMachine::new(Policy {
            me: parts.identity.address,
            master: h.master.clone(),
            fence_after: cfg.sentinel.fence_after,
            forget_after: FORGET_AFTER,
            redis_fence: exec.fences(),
            pause: exec.fence_setup().map_or(Duration::ZERO, |f| f.pause()),
        });
        Self {
            beat: parts.health.register(format!("havip {}", h.havip_id)),
            h,
            cfg,
            node: parts.identity.instance_id.clone(),
            exec,
            machine,
            metrics: parts.metrics.clone(),
            status: parts.status.clone(),
            hooks: parts.hooks.clone(),
            alerter: parts.alerter.clone(),
            events,
            done_tx,
            done_rx,
            bound: false,
            cloud: CloudHolder::Unknown,
            cloud_holder_id: None,
            in_range: false,
            claim: None,
            claim_seq: 0,
            pause_in_flight: false,
            pause_failing: false,
            verify_in_flight: false,
            last_verify: None,
            last_refresh: now,
            last_drift_check: now,
            last_decision: None,
            last_switch: None,
            eip: h_eip.map(EipKeeper::new),
        }
    }

    fn failover_id(&self) -> Option<String> {
        self.machine.failover_id().map(str::to_owned)
    }

    fn emit(&self, kind: AgentEventKind) {
        let _ = self.events.send(AgentEvent {
            havip_id: self.h.havip_id.clone(),
            failover_id: self.failover_id(),
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
            failover_id: self.failover_id(),
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
            failover_id: self.failover_id().unwrap_or_default(),
        }
    }

    /// The local Redis port Sentinel reports for this node (for the write pause), if it named this node.
    fn redis_port(&self) -> Option<u16> {
        self.machine
            .remembered()
            .filter(|c| c.ip == self.machine.policy().me)
            .map(|c| c.port)
    }

    async fn refresh_bound(&mut self) {
        match self.exec.net().is_bound(self.h.vip).await {
            Ok(b) => {
                if b != self.bound {
                    warn!(havip = %self.h.havip_id, vip = %self.h.vip, bound = b, "local binding changed behind the agent's back");
                }
                self.bound = b;
            }
            Err(e) => {
                warn!(havip = %self.h.havip_id, error = %e, "cannot read the interface's addresses")
            }
        }
    }

    async fn run(
        mut self,
        mut snaps: watch::Receiver<Arc<Snapshot>>,
        mut stop: watch::Receiver<bool>,
    ) {
        match self.exec.net().is_bound(self.h.vip).await {
            Ok(b) => self.bound = b,
            Err(e) => {
                error!(havip = %self.h.havip_id, error = %e, "cannot read the interface's addresses")
            }
        }
        info!(havip = %self.h.havip_id, master = %self.h.master, vip = %self.h.vip, eip = ?self.h.eip, bound = self.bound, "watching havip");
        self.spawn_verify(true);
        loop {
            self.beat.beat();
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = self.done_rx.recv() => self.finished(done).await,
                r = snaps.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(wake) => {}
            }
            let snap = snaps.borrow_and_update().clone();
            self.timers().await;
            self.step(&snap).await;
        }
        self.shutdown().await;
    }

    /// When the loop must wake even without news: the fence deadline, pause renewals, a claim retry, timers.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + self.cfg.sentinel.poll_interval.get();
        // Only moments still ahead: a fence already due or a retry already allowed is acted on by the step
        // that saw it, and waking for it again would spin.
        for at in [self.machine.fence_due_at(), self.machine.retry_at()]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
        {
            wake = wake.min(at);
        }
        if let Some(f) = self.exec.fence_setup()
            && let Some((o, _)) = self.machine.last()
            && o.paused
        {
            // A pause in force is renewed at half its length while still needed.
            wake = wake.min(now + f.pause() / 4);
        }
        wake.max(now + Duration::from_millis(1))
    }

    async fn step(&mut self, snap: &Snapshot) {
        let now = Instant::now();
        let view = snap.view(&self.h.master, now.into_std());
        let local = Local {
            bound: self.bound,
            pause_left: self.pause_left(),
        };
        let noticed = self.machine.observe(&view, local, self.cloud, now);
        if let Some(c) = noticed.switched {
            info!(havip = %self.h.havip_id, master = %self.h.master, epoch = c.epoch, master_addr = %c.addr(), "new configuration");
        }
        if let Some(c) = noticed.forgot {
            warn!(havip = %self.h.havip_id, master = %self.h.master, epoch = c.epoch, master_addr = %c.addr(), after_s = FORGET_AFTER.as_secs(), "a majority of sentinels agrees on an older configuration: forgetting the newer one remembered (sentinels re-provisioned?)");
        }
        let decision = self.machine.plan(SystemTime::now());
        if self.last_decision != Some(decision) {
            let actions = decision.actions.to_vec();
            info!(
                havip = %self.h.havip_id,
                master = %self.h.master,
                failover_id = self.failover_id().as_deref().unwrap_or(""),
                epoch = decision.config.map(|c| c.epoch),
                master_addr = ?decision.config.map(|c| c.ip),
                majority = view.majority,
                members = view.members,
                total = view.total,
                pending = ?view.pending.as_ref().map(|p| (p.epoch, p.ip)),
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
                majority: view.majority,
                fence: decision.fence,
                actions,
            });
            self.last_decision = Some(decision);
        }
        for action in decision.actions.iter() {
            self.act(action).await;
        }
        self.publish(&decision, &view);
    }

    fn pause_left(&self) -> Option<Duration> {
        self.exec.fence_setup()?.pause_left(self.redis_port())
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Claim { config } => self.start_claim(config, "claim"),
            Action::Reannounce => {
                if let Some(config) = self.machine.remembered() {
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
                if self.abort_claim().await {
                    info!(havip = %self.h.havip_id, failover_id = self.failover_id().as_deref().unwrap_or(""), "aborted a running claim: this node is no longer the desired holder");
                }
                self.refresh_bound().await;
            }
            Action::Release { reason } => self.release(reason).await,
            Action::PauseWrites => self.pause(false),
            Action::Unpause => self.pause(true),
        }
    }

    /// Stops the running claim and waits until its task is gone, so not one more GARP leaves after this.
    async fn abort_claim(&mut self) -> bool {
        let Some(c) = self.claim.take() else {
            return false;
        };
        c.task.abort();
        let _ = c.task.await;
        self.machine.claim_aborted();
        true
    }

    fn start_claim(&mut self, config: MasterConfig, why: &'static str) {
        if self.claim.is_some() {
            return;
        }
        self.claim_seq += 1;
        let seq = self.claim_seq;
        let decided_at = Instant::now();
        let exec = self.exec.clone();
        let h = self.h.clone();
        let done = self.done_tx.clone();
        let events = self.events.clone();
        let failover_id = self.failover_id();
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
        let confirm_role = self
            .cfg
            .sentinel
            .confirm_role
            .then(|| ConnectOptions::role_check(&self.cfg));
        info!(
            havip = %self.h.havip_id,
            failover_id = self.failover_id().as_deref().unwrap_or(""),
            epoch = config.epoch,
            why,
            "claiming"
        );
        let task = tokio::spawn(async move {
            if let Some(copts) = confirm_role {
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
            let result = exec.claim(&h, opts).await;
            let _ = done.send(Done::Claim { seq, result });
        });
        self.machine.claim_started(config);
        self.claim = Some(RunningClaim {
            seq,
            task,
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
                self.claim_finished(claim, result).await;
            }
            Done::Verify { result } => self.verified(result),
            Done::Eip { result } => self.eip_finished(result),
            Done::Pause { unpause, error } => {
                self.pause_in_flight = false;
                match error {
                    None if unpause => {
                        self.pause_failing = false;
                        self.emit(AgentEventKind::Unpaused)
                    }
                    None => {
                        self.pause_failing = false;
                        self.emit(AgentEventKind::Paused)
                    }
                    // A failed unpause heals by itself: the pause expires after `redis.pause`.
                    Some(_) if unpause => {}
                    Some(e) => {
                        self.metrics.inc_pause_failure(&self.h.havip_id);
                        if std::mem::replace(&mut self.pause_failing, true) {
                            return; // alerted when this run of failures began
                        }
                        self.alert(
                            AlertKind::PauseFailed,
                            format!(
                                "could not pause writes on the local redis while cut off from the \
                                 sentinel majority (acknowledged writes may be lost): {e}"
                            ),
                        );
                    }
                }
            }
        }
    }

    async fn claim_finished(
        &mut self,
        claim: RunningClaim,
        result: Result<ClaimOutcome, ClaimError>,
    ) {
        let took = claim.decided_at.elapsed();
        let fid = self.failover_id().unwrap_or_default();
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let retry_in = self.machine.claim_finished(false, Instant::now());
                error!(havip = %self.h.havip_id, failover_id = %fid, error = %e, retry_in_ms = retry_in.map(|d| d.as_millis() as u64), "claim failed");
                self.metrics.observe_claim(&self.h.havip_id, took, false);
                self.emit(AgentEventKind::ClaimFailed {
                    error: e.to_string(),
                });
                self.alert(AlertKind::ClaimFailed, e.to_string());
                self.refresh_bound().await;
                return;
            }
        };
        self.machine.claim_finished(true, Instant::now());
        self.bound = true;
        self.last_refresh = Instant::now();
        if out.confirmed {
            self.cloud = CloudHolder::ThisNode;
            self.cloud_holder_id = Some(self.exec.claimer().instance_id().to_owned());
            self.in_range = true;
            self.last_verify = Some(Instant::now());
        } else {
            self.cloud = CloudHolder::Unknown;
        }
        if out.associated {
            self.in_range = true;
        }
        self.metrics
            .observe_claim(&self.h.havip_id, took, out.confirmed);
        self.metrics
            .add_garp_frames(&self.h.havip_id, out.frames as u64);
        self.metrics
            .set_last_switch(&self.h.havip_id, SystemTime::now());
        self.last_switch = Some(SystemTime::now());
        let result = match (&out.cloud_error, out.confirmed) {
            (_, true) => "confirmed".to_owned(),
            (Some(e), false) => format!("unconfirmed: {e}"),
            (None, false) => {
                "unconfirmed: the cloud did not name this instance before the deadline".to_owned()
            }
        };
        info!(
            havip = %self.h.havip_id,
            failover_id = %fid,
            epoch = claim.config.epoch,
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
            if out.confirmed {
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

    fn verified(&mut self, result: Result<HaVip, CloudError>) {
        self.verify_in_flight = false;
        self.last_verify = Some(Instant::now());
        match result {
            Ok(h) => {
                let claimer = self.exec.claimer();
                self.in_range = claimer.may_move(&h);
                let mine = claimer.holds(&h);
                self.cloud = if mine {
                    CloudHolder::ThisNode
                } else {
                    CloudHolder::Elsewhere
                };
                // Named as this node names itself (the CVM, or the ENI in ENI mode), so the status compares
                // like with like.
                self.cloud_holder_id = h.holder(claimer.instance_type()).map(str::to_owned);
                debug!(havip = %self.h.havip_id, holder = ?self.cloud_holder_id, in_range = self.in_range, "cloud view");
                self.eip_seen(&h);
            }
            Err(e) => {
                warn!(havip = %self.h.havip_id, error = %e, "could not read the havip from the cloud");
                self.cloud = CloudHolder::Unknown;
            }
        }
    }

    /// Reads the HAVIP from the cloud in the background. At start (`prepare`), an inclusive-scope node also
    /// adds itself to the drift range, so that a later failover needs no API call before its first GARP.
    fn spawn_verify(&mut self, prepare: bool) {
        let Some(cloud) = self.exec.claimer().cloud().cloned() else {
            return;
        };
        if self.verify_in_flight {
            return;
        }
        self.verify_in_flight = true;
        let done = self.done_tx.clone();
        let id = self.h.havip_id.clone();
        let timeout = self.cfg.cloud.timeout.get();
        let claimer = self.exec.claimer().clone();
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
    async fn timers(&mut self) {
        let now = Instant::now();
        let holding = self.bound && self.claim.is_none() && self.cloud != CloudHolder::Elsewhere;
        if now.duration_since(self.last_drift_check) >= self.cfg.sentinel.poll_interval.get()
            && self.claim.is_none()
        {
            self.last_drift_check = now;
            self.refresh_bound().await;
        }
        let desired = self.last_decision.is_some_and(|d| d.desired);
        let refresh = self.cfg.announce.refresh_interval.get();
        if holding
            && desired
            && !refresh.is_zero()
            && now.duration_since(self.last_refresh) >= refresh
            && self.machine.last().is_some_and(|(o, _)| o.majority)
        {
            self.last_refresh = now;
            match self.exec.net().announce_round(self.h.vip.addr).await {
                Ok(frames) => self
                    .metrics
                    .add_garp_frames(&self.h.havip_id, frames as u64),
                Err(e) => warn!(havip = %self.h.havip_id, error = %e, "re-announce failed"),
            }
        }
        let verify_due = self
            .last_verify
            .is_none_or(|t| now.duration_since(t) >= self.cfg.agent.verify_interval.get());
        if self.bound && self.claim.is_none() && verify_due {
            self.spawn_verify(false);
        }
        // Only after the first cloud read (or its failure): binding never races the start-up read.
        if self.last_verify.is_some() && !self.verify_in_flight {
            self.maybe_bind_eip();
        }
    }

    /// A cloud read of the HAVIP: publishes its EIP and, when the configured one is missing, binds it.
    /// Another EIP is never replaced: it is logged and alerted once.
    fn eip_seen(&mut self, h: &HaVip) {
        let id = self.h.havip_id.clone();
        let cloud_eip = h.address_ip.clone();
        let Some(keeper) = self.eip.as_mut() else {
            self.status.update_havip(&id, |s| s.cloud_eip = cloud_eip);
            return;
        };
        let state = eip_state(keeper.want, h);
        keeper.seen(state.clone());
        let want = keeper.want;
        self.publish_eip(cloud_eip);
        match state {
            EipState::Bound => debug!(havip = %id, eip = %want, "eip bound"),
            EipState::Missing => self.maybe_bind_eip(),
            EipState::Other(bound) => self.eip_other(&bound),
        }
    }

    /// The HAVIP has another EIP than the configured one: say so once (error log and alert), change nothing.
    fn eip_other(&mut self, bound: &str) {
        let Some(keeper) = self.eip.as_mut() else {
            return;
        };
        let problem = format!("other:{bound}");
        if keeper.alerted.as_deref() == Some(problem.as_str()) {
            return;
        }
        keeper.alerted = Some(problem);
        let want = keeper.want;
        error!(havip = %self.h.havip_id, eip = %want, bound = %bound, "the havip has another eip than the configured one: not replacing it; unbind it or fix havip.eip");
        self.alert(
            AlertKind::EipMismatch,
            format!(
                "havip has eip {bound}, not the configured {want}; the agent does not replace it"
            ),
        );
    }

    /// Starts a background bind of the configured EIP when one may start (see [`EipKeeper::may_try`]).
    fn maybe_bind_eip(&mut self) {
        let Some(cloud) = self.exec.claimer().cloud().cloned() else {
            return;
        };
        let Some(keeper) = self.eip.as_mut() else {
            return;
        };
        if !keeper.may_try(Instant::now()) {
            return;
        }
        let want = keeper.want;
        let id = self.h.havip_id.clone();
        let done = self.done_tx.clone();
        info!(havip = %id, eip = %want, attempt = keeper.failures + 1, "binding the configured eip to the havip");
        keeper.task = Some(AbortOnDrop(tokio::spawn(async move {
            let result = cloud
                .ensure_address_ip(&id, want, Instant::now() + EIP_ATTEMPT)
                .await;
            let _ = done.send(Done::Eip { result });
        })));
    }

    fn eip_finished(&mut self, result: Result<EipBound, EipError>) {
        let id = self.h.havip_id.clone();
        let Some(keeper) = self.eip.as_mut() else {
            return;
        };
        keeper.task = None;
        let want = keeper.want;
        match result {
            Ok(bound) => {
                keeper.seen(EipState::Bound);
                match bound {
                    EipBound::Bound { task_id } => {
                        info!(havip = %id, eip = %want, task = %task_id, "bound the configured eip to the havip")
                    }
                    EipBound::AlreadyBound => {
                        info!(havip = %id, eip = %want, "the configured eip is already bound to the havip")
                    }
                }
                self.publish_eip(Some(want.to_string()));
            }
            Err(EipError::OtherEip { bound, .. }) => {
                keeper.seen(EipState::Other(bound.clone()));
                self.publish_eip(Some(bound.clone()));
                self.eip_other(&bound);
            }
            Err(e) => {
                let retry_in = keeper.failed(e.is_retryable(), Instant::now());
                let first = keeper.alerted.is_none();
                keeper.alerted.get_or_insert_with(|| "bind failed".into());
                match retry_in {
                    Some(d) => {
                        warn!(havip = %id, eip = %want, error = %e, retry_in_s = d.as_secs(), "could not bind the configured eip to the havip; retrying later")
                    }
                    None => {
                        error!(havip = %id, eip = %want, error = %e, "could not bind the configured eip to the havip; not retrying: an operator must fix this")
                    }
                }
                if first || retry_in.is_none() {
                    self.alert(
                        AlertKind::EipBindFailed,
                        format!("could not bind eip {want} to the havip: {e}"),
                    );
                }
            }
        }
    }

    /// The EIP part of status and metrics.
    fn publish_eip(&self, cloud_eip: Option<String>) {
        let id = &self.h.havip_id;
        let Some(keeper) = &self.eip else {
            return;
        };
        let bound = keeper.state.as_ref().map(|s| *s == EipState::Bound);
        let want = keeper.want.to_string();
        self.metrics.set_eip_bound(id, bound);
        self.status.update_havip(id, |s| {
            s.eip = Some(want);
            s.eip_bound = bound;
            s.cloud_eip = cloud_eip;
        });
    }

    async fn release(&mut self, reason: ReleaseReason) {
        // A claim still running would announce after the release: stop it first, and wait until it is gone.
        self.abort_claim().await;
        let fid = self.failover_id().unwrap_or_default();
        match self.exec.release(&self.h).await {
            Ok(change) => {
                self.bound = false;
                self.machine.released();
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

    /// Pauses writes or lifts the pause, in the background (one command at a time).
    fn pause(&mut self, unpause: bool) {
        if self.pause_in_flight || !self.exec.fences() {
            return;
        }
        self.pause_in_flight = true;
        let exec = self.exec.clone();
        let port = self.redis_port();
        let done = self.done_tx.clone();
        let id = self.h.havip_id.clone();
        let fid = self.failover_id().unwrap_or_default();
        let pause_ms = self
            .exec
            .fence_setup()
            .map_or(0, |f| f.pause().as_millis() as u64);
        tokio::spawn(async move {
            let r = if unpause {
                exec.unpause(port).await
            } else {
                exec.pause(port).await
            };
            match &r {
                Ok(redis) if unpause => {
                    info!(havip = %id, failover_id = %fid, redis = %redis, "lifted the write pause: the majority names this node again")
                }
                Ok(redis) => {
                    info!(havip = %id, failover_id = %fid, redis = %redis, pause_ms, "paused writes on the local redis: cut off from the sentinel majority")
                }
                Err(e) => {
                    warn!(havip = %id, failover_id = %fid, error = %e, "redis fence command failed")
                }
            }
            let _ = done.send(Done::Pause {
                unpause,
                error: r.err().map(|e| e.to_string()),
            });
        });
    }

    fn publish(&self, d: &Decision, view: &MasterView) {
        let id = &self.h.havip_id;
        self.metrics.set_desired(id, d.desired);
        self.metrics.set_local_holder(id, self.bound);
        let cloud_matches = match self.cloud {
            CloudHolder::Unknown => None,
            CloudHolder::ThisNode => Some(self.bound),
            CloudHolder::Elsewhere => Some(!self.bound),
        };
        self.metrics.set_cloud_match(id, cloud_matches);
        self.status.update_havip(id, |s| {
            s.majority_master = d.config.map(|c| c.addr().to_string());
            s.epoch = d.config.map(|c| c.epoch);
            s.desired_holder = d.desired;
            s.local_bound = self.bound;
            s.cloud_holder = self.cloud_holder_id.clone();
            s.cloud_matches = cloud_matches;
            s.last_switch = self.last_switch.map(rfc3339);
            s.fenced = d.fence;
            s.failover_id = self.failover_id();
            s.pending_master = view
                .pending
                .as_ref()
                .map(|p| format!("{} epoch {}", p.addr(), p.epoch));
        });
    }

    async fn shutdown(&mut self) {
        // A bind in flight is not waited for: it is harmless to stop, and the next start tries again.
        if let Some(k) = self.eip.as_mut() {
            k.task = None;
        }
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
                        c.task.abort();
                        let _ = c.task.await;
                        break;
                    }
                }
            }
        }
        match self.cfg.agent.on_shutdown {
            OnShutdown::Keep => {
                info!(havip = %self.h.havip_id, bound = self.bound, "stopping: keeping the vip as it is (agent.on_shutdown = keep)");
            }
            OnShutdown::Release => match self.exec.release(&self.h).await {
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
    #[error("{}", crate::logging::error_chain(.0.as_ref()))]
    Permanent(anyhow::Error),
    /// A problem that may go away (metadata unreachable at start).
    #[error("{}", crate::logging::error_chain(.0.as_ref()))]
    Transient(anyhow::Error),
}

/// `havip-agent run`: builds the real parts (through `boot`, like every front door), starts the agent and
/// the HTTP endpoint, talks to systemd (`READY=1`, `WATCHDOG=1` while every task makes progress,
/// `STOPPING=1`), and runs until SIGTERM or SIGINT.
pub async fn run(config_path: &std::path::Path) -> Result<(), StartError> {
    let perm = |e: anyhow::Error| StartError::Permanent(e);
    // First thing: from here on SIGTERM/SIGINT are queued for the loops below instead of killing the process,
    // so a stop during start-up (systemd's TimeoutStartSec, an operator) still runs `agent.on_shutdown`.
    let mut signals = Signals::install().map_err(perm)?;
    crate::process::harden();
    let boot = tokio::select! {
        b = crate::boot::boot(config_path) => b.map_err(|e| {
            if e.is_transient() {
                StartError::Transient(e.into())
            } else {
                StartError::Permanent(e.into())
            }
        })?,
        name = signals.recv() => {
            // Nothing was claimed yet, so there is no shutdown policy to apply.
            info!("{name} during start-up, before the agent started: stopped");
            return Ok(());
        }
    };
    let cfg = boot.cfg.clone();
    let identity = boot.identity.clone();
    for w in crate::check::exposure_warnings(&cfg) {
        warn!("{w}");
    }
    crate::net::require_capabilities().map_err(|e| perm(e.into()))?;
    let net = crate::net::KernelNet::open(&cfg.node.interface)
        .await
        .map_err(|e| perm(e.into()))?;
    let metrics = Metrics::new();
    let env = |k: &str| std::env::var(k).ok();
    let cloud = boot.cloud(&env, Some(Arc::new(metrics.clone()))).await;
    match (&cloud.client, &cloud.problem) {
        (_, Some(p @ crate::boot::CloudProblem::Client(_))) => {
            return Err(perm(anyhow::anyhow!("{p}")));
        }
        (Some(_), Some(p)) => {
            warn!(error = %p, "cloud credentials not available yet; the cam role will be looked up on first use")
        }
        (None, Some(p)) => {
            error!(error = %p, "no cloud credentials: running local-only (bind and announce); the drift range and moves cannot be confirmed")
        }
        _ => {}
    }
    // A warm connection for a failover's first call after hours of standby (cloud.keep_warm).
    let _keep_warm = cloud
        .client
        .as_ref()
        .map(|c| c.spawn_keep_warm(cfg.cloud.keep_warm.get()));
    let claimer = Claimer::new(
        cloud.client,
        Arc::new(net),
        identity.instance_id.clone(),
        cfg.node.instance_type,
        cfg.announce.clone(),
        cfg.cloud.timeout.get(),
    );
    let status = StatusHandle::new(StatusReport::default());
    let health = Health::new(Duration::from_secs(3).max(cfg.sentinel.poll_interval.get() * 3));
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
    // The control socket: migrate-havip, run by Sentinel without privileges, asks this daemon to look again.
    // Without it the daemon still does its whole job; the script then acts on its own, if it can.
    let control = match crate::control::serve_agent(&agent, &status, &cfg, identity.address) {
        Ok(c) => Some(c),
        Err(e) => {
            error!(error = %e, "no control socket: migrate-havip run by Sentinel cannot ask this daemon and must act on its own (with its file capabilities)");
            None
        }
    };
    // READY=1 once the Sentinel watch is up: the first Sentinel answered (or a bounded wait passed, so a
    // deployment whose Sentinels are all down still starts and reports it in /status and /healthz). A signal
    // during the wait stops the agent through the same path as after READY.
    let mut stop_early = None;
    {
        let mut snaps = agent.watcher().snapshots();
        tokio::select! {
            _ = tokio::time::timeout(
                Duration::from_secs(10),
                snaps.wait_for(|s| s.reachable() > 0),
            ) => {}
            name = signals.recv() => stop_early = Some(name),
        }
    }
    if let Some(name) = stop_early {
        info!("{name} before ready: stopping");
    } else {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    let watchdog = sd_notify::watchdog_enabled();
    let ping_every = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(5));
    let mut tick = tokio::time::interval(ping_every.max(Duration::from_millis(100)));
    let mut was_healthy = true;
    while stop_early.is_none() {
        tokio::select! {
            name = signals.recv() => { info!("{name}: stopping"); break; }
            _ = tick.tick() => {
                // The watchdog is fed only while every task makes progress; a stuck one gets us restarted.
                match health.check() {
                    Ok(()) => {
                        was_healthy = true;
                        if watchdog.is_some() {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                    Err(why) => {
                        if was_healthy {
                            error!(reason = %why, "a task stopped making progress: /healthz is red and the watchdog is no longer fed");
                        }
                        was_healthy = false;
                    }
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // First: no wake-up is taken while the agent stops (clients are dropped, never waited for).
    if let Some(c) = control {
        c.shutdown().await;
    }
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

/// SIGTERM and SIGINT, registered once at the start of [`run`] so that none is lost or fatal afterwards.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use anyhow::Context;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The next signal's name, as the log lines say it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "sigterm",
            _ = self.int.recv() => "sigint",
        }
    }
}

impl crate::cloud::ApiObserver for Metrics {
    fn observe(&self, action: &str, elapsed: Duration, error_code: Option<&str>) {
        self.observe_api(action, elapsed, error_code);
    }
}

#[cfg(test)]
mod eip_keeper_tests {
    use super::*;

    fn keeper() -> EipKeeper {
        EipKeeper::new("203.0.113.10".parse().unwrap())
    }

    #[test]
    fn binds_only_while_the_eip_is_missing_or_unknown() {
        let now = Instant::now();
        let mut k = keeper();
        assert!(k.may_try(now), "unknown: an attempt reads first");
        k.seen(EipState::Missing);
        assert!(k.may_try(now));
        k.seen(EipState::Bound);
        assert!(!k.may_try(now), "bound: nothing to do");
        k.seen(EipState::Other("203.0.113.99".into()));
        assert!(!k.may_try(now), "another eip is never replaced");
    }

    #[test]
    fn retries_heal_with_a_doubling_wait_and_permanent_failures_wait_for_a_new_view() {
        let now = Instant::now();
        let mut k = keeper();
        k.seen(EipState::Missing);
        assert_eq!(k.failed(true, now), Some(EIP_RETRY_FIRST));
        assert!(!k.may_try(now) && k.may_try(now + EIP_RETRY_FIRST));
        assert_eq!(k.failed(true, now), Some(EIP_RETRY_FIRST * 2));
        for _ in 0..20 {
            k.failed(true, now);
        }
        assert_eq!(k.retry_at, Some(now + EIP_RETRY_CAP));
        k.seen(EipState::Bound);
        assert_eq!((k.failures, k.retry_at), (0, None));

        let mut k = keeper();
        k.seen(EipState::Missing);
        assert_eq!(k.failed(false, now), None);
        assert!(!k.may_try(now + EIP_RETRY_CAP), "permanent: no retry");
        k.seen(EipState::Missing);
        assert!(!k.may_try(now), "the same view does not lift it");
        k.seen(EipState::Other("203.0.113.99".into()));
        k.seen(EipState::Missing);
        assert!(k.may_try(now), "a changed view does");
    }
}

#[cfg(test)]
mod event_size {
    use super::*;

    /// The event channel allocates `EVENT_CAPACITY` slots of this size at start, whether anyone listens or
    /// not (issue 13: the idle daemon's RSS). A variant that grows it must be boxed like the Sentinel one.
    #[test]
    fn an_agent_event_stays_small() {
        let size = std::mem::size_of::<AgentEvent>();
        eprintln!("AgentEvent: {size} bytes");
        assert!(size <= 160, "AgentEvent is {size} bytes");
    }
}
