//! The watcher: one task per configured Sentinel, publishing a [`Snapshot`] the moment any answer changes.
//!
//! Owns the connections and their life cycle. Each task keeps a command connection (heartbeat `PING` every
//! `heartbeat`, queries) and a Pub/Sub connection (wake-up events). Any timeout or error on the command
//! connection marks the Sentinel unreachable, drops both connections and reconnects with exponential backoff
//! and full jitter, capped at `reconnect_max`. Events from any Sentinel make every task re-query at once;
//! each task publishes its own answer immediately, without waiting for the others, so the first Sentinel to
//! show a new epoch is seen within a millisecond or so. It does not interpret the view (see
//! [`Snapshot::newest`]) or act on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use redis::aio::PubSubStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::conn::SentinelAnswer;
use super::conn::{self, ConnectOptions, sentinel_peer};
use super::snapshot::{MasterConfig, SentinelState, Snapshot};
use super::{Event, EventError, SentinelError, WATCHED_CHANNELS, parse_event};
use crate::config::SentinelConfig;

/// Knobs beyond the config, mostly for tests and the demo.
#[derive(Clone)]
pub struct WatchOptions {
    /// Subscribe to events. Off: the watcher relies on polls alone.
    pub subscribe: bool,
    /// After a Pub/Sub connection is lost while the command connection stays up, wait at least this long
    /// before subscribing again (on top of the backoff). Tests raise it to prove that polls alone catch a
    /// switch whose events were missed.
    pub resubscribe_delay: Duration,
    /// How many [`ObservedEvent`]s a slow [`Watcher::events`] receiver may lag behind before it loses some.
    pub event_capacity: usize,
    /// How to reach a Redis for the `ROLE` that corroborates a configuration only one Sentinel reports
    /// (credentials from `[redis]`). Default: the Sentinel's TLS setting, no credentials.
    pub role: Option<ConnectOptions>,
    /// Called with the Sentinel's index every time its task makes progress (a loop turn, a reconnect
    /// attempt): the daemon's per-watcher health beat.
    pub progress: Option<Progress>,
}

/// See [`WatchOptions::progress`].
pub type Progress = Arc<dyn Fn(usize) + Send + Sync>;

impl std::fmt::Debug for WatchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchOptions")
            .field("subscribe", &self.subscribe)
            .field("resubscribe_delay", &self.resubscribe_delay)
            .field("event_capacity", &self.event_capacity)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            subscribe: true,
            resubscribe_delay: Duration::ZERO,
            event_capacity: 256,
            role: None,
            progress: None,
        }
    }
}

/// One event as received, for logs, metrics and timelines.
#[derive(Debug, Clone)]
pub struct ObservedEvent {
    /// When this watcher received it.
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: SystemTime,
    /// The Sentinel that published it (configured `host:port`).
    pub sentinel: String,
    /// The channel (event name).
    pub channel: String,
    /// The raw payload.
    pub payload: String,
    /// The parsed event.
    pub event: Event,
}

/// Handle to the running watch tasks. Dropping it (or [`Watcher::shutdown`]) stops them.
pub struct Watcher {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("sentinels", &self.shared.addrs)
            .field("masters", &self.shared.masters)
            .finish()
    }
}

struct Timing {
    timeout: Duration,
    heartbeat: Duration,
    poll: Duration,
    reconnect_max: Duration,
    /// Every task's heartbeats and polls fall on `epoch + k * period`: the tasks' timers expire together,
    /// so one wake-up of the process serves every Sentinel instead of one each (an idle agent's cost is
    /// mostly its wake-ups, BENCHMARKS.md).
    epoch: tokio::time::Instant,
}

/// The first instant `epoch + k * period` (k a whole number) after `now`.
fn next_aligned(
    epoch: tokio::time::Instant,
    now: tokio::time::Instant,
    period: Duration,
) -> tokio::time::Instant {
    let period_ns = period.as_nanos().max(1);
    let since = now.saturating_duration_since(epoch).as_nanos();
    let k = since / period_ns + 1;
    // Periods are bounded by the config's checks; should one still overflow, fall back to `now + period`.
    u64::try_from(k.saturating_mul(period_ns))
        .ok()
        .and_then(|offset| epoch.checked_add(Duration::from_nanos(offset)))
        .unwrap_or_else(|| now + period)
}

/// An interval on the shared grid of [`Timing::epoch`]. A late tick is skipped, not caught up, so the
/// tasks stay in step.
fn aligned_interval(epoch: tokio::time::Instant, period: Duration) -> tokio::time::Interval {
    let start = next_aligned(epoch, tokio::time::Instant::now(), period);
    let mut i = tokio::time::interval_at(start, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
}

struct Shared {
    addrs: Vec<String>,
    masters: Vec<String>,
    connect: ConnectOptions,
    role: ConnectOptions,
    timing: Timing,
    opts: WatchOptions,
    state: Mutex<Inner>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<ObservedEvent>,
    /// Bumped on every event; every task re-queries when it changes.
    wake: watch::Sender<u64>,
    /// Per Sentinel: queries started and queries finished (answered or failed), so that
    /// [`Sampler::resample`] knows when every Sentinel has answered a query started after its wake-up.
    rounds: watch::Sender<Vec<(u64, u64)>>,
}

struct Inner {
    sentinels: Vec<SentinelState>,
    seq: u64,
}

impl Watcher {
    /// Starts one task per `cfg.addresses` entry, watching `masters`. Must be called inside a tokio runtime.
    /// The receiver starts with an empty snapshot (nobody reachable, `seq` 0).
    pub fn spawn(
        cfg: &SentinelConfig,
        masters: Vec<String>,
    ) -> (Watcher, watch::Receiver<Arc<Snapshot>>) {
        Self::spawn_with(cfg, masters, WatchOptions::default())
    }

    /// [`Watcher::spawn`] with extra options.
    pub fn spawn_with(
        cfg: &SentinelConfig,
        masters: Vec<String>,
        opts: WatchOptions,
    ) -> (Watcher, watch::Receiver<Arc<Snapshot>>) {
        let shared = Arc::new(Shared::new(cfg, masters, opts));
        let rx = shared.snapshots.subscribe();
        let (stop, _) = watch::channel(false);
        let tasks = (0..shared.addrs.len())
            .map(|idx| {
                let shared = shared.clone();
                let stop = stop.subscribe();
                tokio::spawn(run(shared, idx, stop))
            })
            .collect();
        tracing::info!(
            sentinels = ?shared.addrs,
            masters = ?shared.masters,
            "watching sentinels"
        );
        (
            Watcher {
                shared,
                stop,
                tasks,
            },
            rx,
        )
    }

    /// Every event any Sentinel publishes, as it arrives. Only events sent after this call are received.
    pub fn events(&self) -> broadcast::Receiver<ObservedEvent> {
        self.shared.events.subscribe()
    }

    /// Another receiver of the snapshots.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshots.subscribe()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshots.borrow().clone()
    }

    /// Makes every Sentinel task query now, as an event would.
    pub fn refresh(&self) {
        self.shared.wake_all();
    }

    /// A handle that re-samples the Sentinels on demand (the daemon's control socket holds one).
    pub fn sampler(&self) -> Sampler {
        Sampler {
            shared: self.shared.clone(),
        }
    }

    /// Stops every task and closes every connection.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

/// Re-samples the Sentinels on demand; see [`Watcher::sampler`]. After the watcher is gone,
/// [`Sampler::resample`] only waits out its deadline.
#[derive(Clone)]
pub struct Sampler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("sentinels", &self.shared.addrs)
            .finish()
    }
}

impl Sampler {
    /// Wakes every Sentinel task and waits until each one that is connected has finished a query started
    /// after the wake-up (answered or failed), or until `within` passed. Returns whether every connected
    /// Sentinel answered in time. A Sentinel that is not reachable (its task waits to reconnect) is not
    /// waited for: it publishes on its own when it comes back.
    pub async fn resample(&self, within: Duration) -> bool {
        let mut rounds = self.shared.rounds.subscribe();
        let reachable: Vec<bool> = self
            .shared
            .snapshots
            .borrow()
            .sentinels
            .iter()
            .map(|s| s.reachable)
            .collect();
        // A query running now may have been sent before what prompted the wake-up: wait for the next one.
        let target: Vec<u64> = rounds
            .borrow_and_update()
            .iter()
            .map(|(s, _)| s + 1)
            .collect();
        self.shared.wake_all();
        let done = |r: &Vec<(u64, u64)>| {
            r.iter()
                .zip(&target)
                .zip(&reachable)
                .all(|(((_, finished), t), up)| !up || finished >= t)
        };
        tokio::time::timeout(within, rounds.wait_for(done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshots.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Shared {
    fn new(cfg: &SentinelConfig, masters: Vec<String>, opts: WatchOptions) -> Shared {
        let addrs = cfg.addresses.clone();
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::empty(&addrs)));
        let (events, _) = broadcast::channel(opts.event_capacity.max(1));
        let (wake, _) = watch::channel(0u64);
        let (rounds, _) = watch::channel(vec![(0, 0); addrs.len()]);
        Shared {
            state: Mutex::new(Inner {
                sentinels: addrs.iter().map(SentinelState::new).collect(),
                seq: 0,
            }),
            addrs,
            masters,
            role: opts.role.clone().unwrap_or_else(|| ConnectOptions {
                username: None,
                password: None,
                ..ConnectOptions::sentinel(cfg)
            }),
            connect: ConnectOptions::sentinel(cfg),
            timing: Timing {
                timeout: cfg.timeout.get(),
                heartbeat: cfg.heartbeat.get().max(Duration::from_millis(1)),
                poll: cfg.poll_interval.get().max(Duration::from_millis(1)),
                reconnect_max: cfg.reconnect_max.get(),
                epoch: tokio::time::Instant::now(),
            },
            opts,
            snapshots,
            events,
            wake,
            rounds,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn progress(&self, idx: usize) {
        if let Some(p) = &self.opts.progress {
            p(idx);
        }
    }

    fn wake_all(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Applies `f` to Sentinel `idx`'s state; publishes a new snapshot if `f` says something changed.
    fn update(&self, idx: usize, f: impl FnOnce(&mut SentinelState) -> bool) {
        let mut inner = self.lock();
        if !f(&mut inner.sentinels[idx]) {
            return;
        }
        inner.seq += 1;
        let snap = Snapshot {
            total: inner.sentinels.len(),
            sentinels: inner.sentinels.clone(),
            seq: inner.seq,
            at: Instant::now(),
        };
        // Sent under the lock so snapshots leave in `seq` order.
        self.snapshots.send_replace(Arc::new(snap));
    }

    /// Records a successful command without publishing.
    fn touch(&self, idx: usize) {
        self.lock().sentinels[idx].last_ok = Some(Instant::now());
    }

    fn set_subscribed(&self, idx: usize, subscribed: bool) {
        self.update(idx, |s| {
            let changed = s.subscribed != subscribed;
            s.subscribed = subscribed;
            changed
        });
    }

    fn mark_unreachable(&self, idx: usize, err: &SentinelError) {
        let addr = &self.addrs[idx];
        let text = err.to_string();
        self.update(idx, |s| {
            let changed = s.reachable || s.subscribed || !s.masters.is_empty();
            if s.reachable {
                tracing::warn!(sentinel = %addr, error = %text, "sentinel unreachable");
            } else if s.error.as_deref() != Some(text.as_str()) {
                tracing::warn!(sentinel = %addr, error = %text, "cannot reach sentinel");
            } else {
                tracing::debug!(sentinel = %addr, error = %text, "still cannot reach sentinel");
            }
            s.reachable = false;
            s.subscribed = false;
            s.masters.clear();
            s.master_since.clear();
            s.error = Some(text);
            changed
        });
    }

    /// Records one answer of Sentinel `idx` and publishes it if anything changed.
    fn record_answer(&self, idx: usize, answer: SentinelAnswer) {
        let addr = &self.addrs[idx];
        let now = Instant::now();
        let mut masters = HashMap::new();
        let mut errors = Vec::new();
        for (name, answer) in self.masters.iter().zip(answer.masters) {
            match answer {
                Ok(info) => {
                    masters.insert(name.clone(), info);
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        self.update(idx, |s| {
            let was_reachable = s.reachable;
            if !was_reachable {
                tracing::info!(sentinel = %addr, "sentinel reachable");
            }
            if let Some(e) = &error
                && error != s.error
            {
                // Logged once per distinct problem, not once per poll.
                tracing::warn!(sentinel = %addr, error = %e, "ignoring bad sentinel answer");
            }
            for (name, info) in &masters {
                let same = s
                    .masters
                    .get(name)
                    .is_some_and(|old| MasterConfig::of(old) == MasterConfig::of(info));
                if !same {
                    s.master_since.insert(name.clone(), now);
                    s.role_confirmed.remove(name);
                    tracing::info!(
                        sentinel = %addr,
                        master = %name,
                        epoch = info.config_epoch,
                        addr = %info.addr(),
                        flags = %info.flags.join(","),
                        "sentinel reports master"
                    );
                }
            }
            s.master_since.retain(|name, _| masters.contains_key(name));
            s.role_confirmed
                .retain(|name, _| masters.contains_key(name));
            let changed = !was_reachable || s.masters != masters || s.myid != answer.myid;
            s.reachable = true;
            s.last_ok = Some(now);
            s.masters = masters;
            s.myid = answer.myid;
            s.error = error;
            changed
        });
    }

    /// Asks `ROLE` at every address Sentinel `idx` alone reports (see [`Snapshot::needs_role_check`]) and
    /// publishes each confirmation as it comes. One round trip on a LAN: the pre-switch announce keeps its
    /// lead. The checks run side by side: when one Sentinel set fails over 20 masters at once, one after
    /// another cost the last master 20 connections' time (17 ms in the scale lab, enough to announce after
    /// its `+switch-master`), and one unreachable address would hold up every other master for `timeout`.
    async fn corroborate(&self, idx: usize) {
        let snap = self.snapshots.borrow().clone();
        let checks = self.masters.iter().filter_map(|master| {
            let at = snap.needs_role_check(idx, master)?;
            Some(self.check_role(idx, master, at))
        });
        futures::future::join_all(checks).await;
    }

    /// One `ROLE` check of [`Shared::corroborate`]: publishes the confirmation if `at` says it is a master
    /// and Sentinel `idx` still reports it.
    async fn check_role(&self, idx: usize, master: &str, at: std::net::SocketAddr) {
        let confirmed = match conn::confirm_role(at.ip(), at.port(), &self.role).await {
            Ok(master_role) => master_role,
            Err(e) => {
                tracing::debug!(sentinel = %self.addrs[idx], master = %master, redis = %at, error = %e, "role check failed");
                false
            }
        };
        if confirmed {
            self.update(idx, |s| {
                // Only if the Sentinel still reports that address.
                let still = s.masters.get(master).is_some_and(|m| m.addr() == at);
                if still {
                    tracing::info!(sentinel = %self.addrs[idx], master = %master, redis = %at, "role confirms the configuration only this sentinel reports so far");
                    s.role_confirmed.insert(master.to_owned(), true);
                }
                still
            });
        }
    }

    fn on_message(&self, idx: usize, msg: redis::Msg) {
        let addr = &self.addrs[idx];
        let channel = msg.get_channel_name().to_owned();
        let payload = msg.get_payload_bytes();
        match parse_event(&channel, payload) {
            Ok(event) => {
                let payload = String::from_utf8_lossy(payload).into_owned();
                // Info gets the event and the master only; the payload (addresses, run ids, whatever a
                // Sentinel sends) is for debugging, and a flood of events must not fill the journal.
                tracing::info!(
                    sentinel = %addr,
                    channel = %channel,
                    master = event.master().unwrap_or(""),
                    "sentinel event"
                );
                tracing::debug!(
                    sentinel = %addr,
                    channel = %channel,
                    payload = %payload,
                    "sentinel event payload"
                );
                // Wake first: the queries matter more than the timeline.
                self.wake_all();
                let _ = self.events.send(ObservedEvent {
                    at: Instant::now(),
                    wall: SystemTime::now(),
                    sentinel: addr.clone(),
                    channel,
                    payload,
                    event,
                });
            }
            Err(e) => {
                // The warning names the problem; the payload it quotes goes to debug only.
                let problem = match &e {
                    EventError::NotUtf8 { .. } => "payload is not utf-8".to_owned(),
                    EventError::Malformed { problem, .. } => problem.clone(),
                };
                tracing::warn!(sentinel = %addr, channel = %channel, problem = %problem, "ignoring malformed sentinel event");
                tracing::debug!(sentinel = %addr, error = %e, "malformed sentinel event");
            }
        }
    }
}

/// Exponential backoff with full jitter: a random delay in `[0, min(cap, base * 2^attempt)]`.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(50).min(cap);
    let ceiling = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap)
        .as_millis() as u64;
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// Why a session ended.
enum End {
    Stop,
    Failed(SentinelError),
}

impl From<SentinelError> for End {
    fn from(e: SentinelError) -> Self {
        End::Failed(e)
    }
}

async fn run(shared: Arc<Shared>, idx: usize, mut stop: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    // `resubscribe_delay` holds across sessions: a reconnect of the command connection must not bring
    // back a subscription the options say to keep away.
    let mut sub_hold: Option<tokio::time::Instant> = None;
    loop {
        shared.progress(idx);
        match session(&shared, idx, &mut stop, &mut failures, &mut sub_hold).await {
            End::Stop => return,
            End::Failed(e) => {
                shared.mark_unreachable(idx, &e);
                let delay = backoff(failures, shared.timing.reconnect_max);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn next_message(sub: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn query(
    shared: &Shared,
    idx: usize,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<(), SentinelError> {
    shared.rounds.send_modify(|r| r[idx].0 += 1);
    let addr = &shared.addrs[idx];
    let result = conn::query_masters(conn, addr, &shared.masters, shared.timing.timeout).await;
    let result = match result {
        Ok(answer) => {
            shared.record_answer(idx, answer);
            shared.corroborate(idx).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    shared.rounds.send_modify(|r| r[idx].1 += 1);
    result
}

/// One connection's life: connect, query, then heartbeat/poll/events until something fails.
async fn session(
    shared: &Shared,
    idx: usize,
    stop: &mut watch::Receiver<bool>,
    failures: &mut u32,
    sub_hold: &mut Option<tokio::time::Instant>,
) -> End {
    let addr = shared.addrs[idx].clone();
    let peer = sentinel_peer(&addr);
    let timing = &shared.timing;
    let mut wake = shared.wake.subscribe();
    wake.mark_unchanged();

    let mut conn = tokio::select! {
        _ = stop.changed() => return End::Stop,
        c = conn::connect_caller_bounded(&addr, &shared.connect) => match c {
            Ok(c) => c,
            Err(e) => return End::Failed(e),
        },
    };
    // Reachable only once it has answered, not when TCP connects: a frozen process still completes the
    // handshake (the kernel does), and counting that would make reachability flap.
    if let Err(e) = query(shared, idx, &mut conn).await {
        return End::Failed(e);
    }
    *failures = 0;

    let mut sub: Option<PubSubStream> = None;
    let mut sub_failures: u32 = 0;
    let mut sub_retry: Option<tokio::time::Instant> = shared.opts.subscribe.then(|| {
        let now = tokio::time::Instant::now();
        sub_hold.map_or(now, |h| h.max(now))
    });

    let mut heartbeat = aligned_interval(timing.epoch, timing.heartbeat);
    let mut poll = aligned_interval(timing.epoch, timing.poll);
    // When this connection last answered. A heartbeat right after an answer (the poll and the heartbeat
    // share ticks) would only say again what the answer said.
    let mut heard = tokio::time::Instant::now();

    let result: Result<(), SentinelError> = async {
        loop {
            shared.progress(idx);
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                msg = next_message(&mut sub), if sub.is_some() => match msg {
                    Some(msg) => shared.on_message(idx, msg),
                    None => {
                        // The Sentinel closed our Pub/Sub connection (CLIENT KILL, output buffer limit, restart).
                        // Events may have been missed: re-query now, subscribe again later.
                        sub = None;
                        shared.set_subscribed(idx, false);
                        let delay = backoff(sub_failures, timing.reconnect_max).max(shared.opts.resubscribe_delay);
                        sub_failures = sub_failures.saturating_add(1);
                        tracing::warn!(sentinel = %addr, retry_in = ?delay, "sentinel pub/sub connection lost");
                        sub_retry = Some(tokio::time::Instant::now() + delay);
                        if !shared.opts.resubscribe_delay.is_zero() {
                            *sub_hold = sub_retry;
                        }
                        query(shared, idx, &mut conn).await?;
                    }
                },
                _ = wake.changed() => {
                    query(shared, idx, &mut conn).await?;
                    heard = tokio::time::Instant::now();
                }
                _ = poll.tick() => {
                    query(shared, idx, &mut conn).await?;
                    heard = tokio::time::Instant::now();
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() >= timing.heartbeat / 2 {
                        conn::ping_conn(&mut conn, &peer, timing.timeout).await?;
                        heard = tokio::time::Instant::now();
                        shared.touch(idx);
                    }
                }
                _ = tokio::time::sleep_until(sub_retry.unwrap_or_else(tokio::time::Instant::now)),
                    if sub.is_none() && sub_retry.is_some() =>
                {
                    match conn::subscribe(&addr, &shared.connect, WATCHED_CHANNELS).await {
                        Ok(pubsub) => {
                            let (_sink, stream) = pubsub.split();
                            sub = Some(stream);
                            sub_retry = None;
                            sub_failures = 0;
                            shared.set_subscribed(idx, true);
                            tracing::debug!(sentinel = %addr, "subscribed to sentinel events");
                            // Anything published before the subscription took effect was missed.
                            query(shared, idx, &mut conn).await?;
                        }
                        Err(e) => {
                            let delay = backoff(sub_failures, timing.reconnect_max);
                            sub_failures = sub_failures.saturating_add(1);
                            if sub_failures == 1 {
                                tracing::warn!(sentinel = %addr, error = %e, "cannot subscribe to sentinel events");
                            } else {
                                tracing::debug!(sentinel = %addr, error = %e, "cannot subscribe to sentinel events");
                            }
                            sub_retry = Some(tokio::time::Instant::now() + delay);
                        }
                    }
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => End::Stop,
        Err(e) => End::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentinel::MasterInfo;

    fn info(epoch: u64, ip: &str) -> MasterInfo {
        MasterInfo {
            name: "m".into(),
            ip: ip.parse().unwrap(),
            port: 6379,
            config_epoch: epoch,
            flags: vec!["master".into()],
            down_after: Duration::from_millis(1000),
            failover_in_progress: false,
            num_other_sentinels: 2,
            quorum: 2,
            peers: None,
        }
    }

    #[test]
    fn snapshots_are_published_only_when_something_changes() {
        let cfg: SentinelConfig =
            toml::from_str(r#"addresses = ["a:26379", "b:26379", "c:26379"]"#).unwrap();
        let shared = Shared::new(&cfg, vec!["m".into()], WatchOptions::default());
        let rx = shared.snapshots.subscribe();
        let seq = || rx.borrow().seq;
        let answer = |r: Result<MasterInfo, super::super::ReplyError>| SentinelAnswer {
            myid: None,
            masters: vec![r],
        };
        assert_eq!(seq(), 0);

        shared.record_answer(0, answer(Ok(info(1, "10.0.0.1"))));
        assert_eq!(seq(), 1, "first answer: reachable");
        let first = rx.borrow().sentinels[0].master_since["m"];
        assert!(rx.borrow().sentinels[0].reachable);

        // Instants taken a millisecond apart, so "later" is observable.
        std::thread::sleep(Duration::from_millis(1));
        shared.record_answer(0, answer(Ok(info(1, "10.0.0.1"))));
        assert_eq!(seq(), 1, "the same answer again publishes nothing");
        assert!(
            shared.lock().sentinels[0].last_ok > Some(first),
            "but counts as a sign of life"
        );

        shared.record_answer(0, answer(Ok(info(2, "10.0.0.2"))));
        assert_eq!(seq(), 2, "a new epoch publishes");
        let snap = rx.borrow().clone();
        assert!(snap.sentinels[0].master_since["m"] > first);
        assert_eq!(
            snap.view("m", Instant::now()).pending.unwrap().epoch,
            2,
            "one sentinel alone: pending until corroborated"
        );

        let bad = super::super::ReplyError::MissingField {
            command: "SENTINEL MASTER",
            field: "config-epoch",
        };
        shared.record_answer(0, answer(Err(bad.clone())));
        assert_eq!(seq(), 3, "losing the master publishes");
        assert!(
            rx.borrow().sentinels[0]
                .error
                .as_deref()
                .unwrap()
                .contains("config-epoch")
        );
        assert!(
            rx.borrow().sentinels[0].reachable,
            "a bad answer is still an answer"
        );
        shared.record_answer(0, answer(Err(bad)));
        assert_eq!(seq(), 3);

        let dead = SentinelError::Timeout {
            peer: "sentinel a:26379".into(),
            what: "ping",
            after: Duration::from_millis(250),
        };
        shared.mark_unreachable(0, &dead);
        assert_eq!(seq(), 4, "becoming unreachable publishes");
        shared.mark_unreachable(0, &dead);
        assert_eq!(seq(), 4, "staying unreachable does not");
        assert!(!rx.borrow().sentinels[0].reachable);

        shared.set_subscribed(1, true);
        assert_eq!(seq(), 5);
        shared.set_subscribed(1, true);
        assert_eq!(seq(), 5);
    }

    #[test]
    fn every_task_ticks_on_one_grid() {
        let epoch = tokio::time::Instant::now();
        let p = Duration::from_millis(100);
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        assert_eq!(next_aligned(epoch, at(0), p), at(100));
        assert_eq!(next_aligned(epoch, at(1), p), at(100));
        assert_eq!(next_aligned(epoch, at(99), p), at(100));
        assert_eq!(
            next_aligned(epoch, at(100), p),
            at(200),
            "strictly after now"
        );
        assert_eq!(next_aligned(epoch, at(250), p), at(300));
        // Tasks (re)connecting at any moment land on the same instants, also for the poll.
        let s = Duration::from_secs(1);
        assert_eq!(
            next_aligned(epoch, at(1), s),
            next_aligned(epoch, at(740), s)
        );
        assert_eq!(next_aligned(epoch, at(1001), s), at(2000));
        // A zero period (refused by the config, clamped by the watcher) does not divide by zero.
        assert_eq!(
            next_aligned(epoch, at(5), Duration::ZERO),
            at(5) + Duration::from_nanos(1)
        );
    }

    #[test]
    fn backoff_grows_exponentially_and_stays_under_the_cap() {
        let cap = Duration::from_millis(1000);
        for attempt in 0..40 {
            let ceiling = Duration::from_millis(50)
                .saturating_mul(1u32 << attempt.min(16))
                .min(cap);
            for _ in 0..50 {
                let d = backoff(attempt, cap);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            }
        }
        assert_eq!(backoff(5, Duration::ZERO), Duration::ZERO);
    }
}
