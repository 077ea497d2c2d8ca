//! The platform's timing of HAVIP moves in the fake VPC: the delay between an accepted gratuitous ARP and
//! the move, the per-NIC GARP rate limit, and telling subscribers about every move.
//!
//! Owns [`MoveTiming`] (pending moves, the rate-limit windows and drop count, subscribers, moves not yet
//! delivered to them) and [`Mover`], the background thread that applies due moves on time. It does not decide
//! whether a GARP is accepted (drift range, `CheckAssociate`, who owns the MAC: `super::vpc`) and never edits a
//! HAVIP itself: it asks its [`MoveHost`] to.
//!
//! Facts it models (`shared/reference/tencentcloud.md`, "Move timing on the platform"): a GARP from an
//! in-range instance only asks the control plane to move the HAVIP, and the switch "may take about 10
//! seconds" (Tencent's keepalived guide measured about 4 s of ping loss); GARP is rate-limited per NIC.
//!
//! Clocks: the move delay runs on the real clock (a thread waits for it), so tests that pause tokio's time
//! keep the delay at zero (the default: moves are applied at once, inside [`super::FakeCloud::garp`]). The
//! rate limit reads tokio's clock, which is the real one outside a paused runtime: an in-process test with
//! paused time sees its own (virtual) seconds, not a burst of frames squeezed into one real second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::vpc::HolderMove;

/// The default GARP rate limit: frames per second per sender MAC that the fake looks at.
///
/// Tencent does not publish the number. Its HAVIP guide recommends at most 5 HAVIPs per NIC and one GARP
/// per VIP per refresh (`vrrp_garp_master_repeat 1`); the agent's failover burst is 4 rounds of 2 frames in
/// 1 s (`[announce]` defaults). 5 HAVIPs x 8 frames = 40: a NIC with the recommended most HAVIPs gets its
/// whole failover burst through, a sixth HAVIP or a flood does not. keepalived's default (5 GARPs, again
/// after `garp_master_delay 1`) and the seed script's `arping -c 3` stay far below it for one VIP.
pub const DEFAULT_GARP_RATE_LIMIT: Option<u32> = Some(40);

/// The window the rate limit counts frames in.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A subscriber to holder moves (see [`super::FakeCloud::on_move`]).
pub type MoveCallback = Arc<dyn Fn(&HolderMove) + Send + Sync>;

/// A move the platform accepted: the HAVIP goes to `to` (its ENI `eni`) at `due`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingMove {
    /// The HAVIP.
    pub havip_id: String,
    /// The instance that announced.
    pub to: String,
    /// Its ENI.
    pub eni: String,
    /// When the move is applied (real clock).
    pub due: Instant,
    /// The same instant on the wall clock, for outcomes and logs.
    pub due_wall: SystemTime,
}

/// What [`MoveTiming::accept`] decided for an accepted GARP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// No delay: apply this move now.
    Now(PendingMove),
    /// A move was scheduled (replacing a pending move to another instance, if any).
    Scheduled {
        /// When it is due.
        due: SystemTime,
    },
    /// A move to the same instance is already pending: its timer is not restarted.
    AlreadyPending {
        /// When it is due.
        due: SystemTime,
    },
}

/// The fake's move timing and GARP rate limit. Lives inside the fake's state, under its lock.
pub(crate) struct MoveTiming {
    delay: Duration,
    pending: BTreeMap<String, PendingMove>,
    limit: Option<u32>,
    windows: HashMap<[u8; 6], VecDeque<tokio::time::Instant>>,
    dropped: u64,
    subscribers: Vec<MoveCallback>,
    undelivered: Vec<HolderMove>,
    stop: bool,
}

impl Default for MoveTiming {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            pending: BTreeMap::new(),
            limit: DEFAULT_GARP_RATE_LIMIT,
            windows: HashMap::new(),
            dropped: 0,
            subscribers: Vec::new(),
            undelivered: Vec::new(),
            stop: false,
        }
    }
}

impl MoveTiming {
    /// Sets the delay between an accepted GARP and the move. Pending moves keep their time.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// The move delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Sets the per-MAC limit (frames per second; `None`: no limit).
    pub fn set_rate_limit(&mut self, limit: Option<u32>) {
        self.limit = limit;
        self.windows.clear();
    }

    /// GARP frames dropped by the rate limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether a frame from `mac` at `now` is looked at (within the limit); counts it if so, counts a drop
    /// if not.
    pub fn admit_garp(&mut self, mac: [u8; 6], now: tokio::time::Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let window = self.windows.entry(mac).or_default();
        while window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            self.dropped += 1;
            return false;
        }
        window.push_back(now);
        true
    }

    /// An in-range instance announced the HAVIP (and does not hold it): move now, schedule, or leave the
    /// pending move to the same instance alone. A later GARP from another instance replaces a pending move.
    pub fn accept(&mut self, havip_id: &str, to: &str, eni: &str, now: Instant) -> Accepted {
        let wall = SystemTime::now();
        let mv = |due: Instant, due_wall: SystemTime| PendingMove {
            havip_id: havip_id.to_owned(),
            to: to.to_owned(),
            eni: eni.to_owned(),
            due,
            due_wall,
        };
        if self.delay.is_zero() {
            // A move pending from before the delay was turned off would undo this one later.
            self.pending.remove(havip_id);
            return Accepted::Now(mv(now, wall));
        }
        if let Some(p) = self.pending.get(havip_id)
            && p.to == to
        {
            return Accepted::AlreadyPending { due: p.due_wall };
        }
        let due_wall = wall + self.delay;
        self.pending
            .insert(havip_id.to_owned(), mv(now + self.delay, due_wall));
        Accepted::Scheduled { due: due_wall }
    }

    /// The holder announced its own HAVIP: as the last accepted GARP, it replaces a pending move away from
    /// it (which is then never applied). Returns the cancelled move.
    pub fn holder_announced(&mut self, havip_id: &str) -> Option<PendingMove> {
        self.pending.remove(havip_id)
    }

    /// The pending move of a HAVIP, if any.
    #[cfg(test)]
    pub fn pending(&self, havip_id: &str) -> Option<&PendingMove> {
        self.pending.get(havip_id)
    }

    /// Removes and returns every move due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<PendingMove> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<PendingMove> = due.iter().filter_map(|k| self.pending.remove(k)).collect();
        out.sort_by_key(|p| p.due);
        out
    }

    /// When the next pending move is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// Adds a subscriber.
    pub fn subscribe(&mut self, callback: MoveCallback) {
        self.subscribers.push(callback);
    }

    /// A move was applied: queue it for the subscribers (none: nothing kept).
    pub fn moved(&mut self, mv: &HolderMove) {
        if !self.subscribers.is_empty() {
            self.undelivered.push(mv.clone());
        }
    }

    fn take_deliveries(&mut self) -> (Vec<HolderMove>, Vec<MoveCallback>) {
        if self.undelivered.is_empty() {
            return (Vec::new(), Vec::new());
        }
        (
            std::mem::take(&mut self.undelivered),
            self.subscribers.clone(),
        )
    }
}

/// The fake's state, as the move thread needs it.
pub(crate) trait MoveHost: Send + 'static {
    /// The timing inside the state.
    fn timing(&mut self) -> &mut MoveTiming;
    /// Applies a due move: changes the holder, records the [`HolderMove`] and passes it to
    /// [`MoveTiming::moved`].
    fn apply(&mut self, mv: PendingMove);
}

fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    // A panicking subscriber or test must not poison the fake for the rest of the test.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies due moves on a background thread (started by the first non-zero delay) and delivers moves to
/// subscribers in the order they were applied. Dropping it stops the thread.
pub(crate) struct Mover<S: MoveHost> {
    state: Arc<Mutex<S>>,
    wake: Arc<Condvar>,
    deliver_lock: Arc<Mutex<()>>,
    thread: Mutex<bool>,
}

impl<S: MoveHost> Mover<S> {
    /// A mover for `state`; no thread yet.
    pub fn new(state: Arc<Mutex<S>>) -> Self {
        Self {
            state,
            wake: Arc::new(Condvar::new()),
            deliver_lock: Arc::new(Mutex::new(())),
            thread: Mutex::new(false),
        }
    }

    /// Starts the thread if it is not running yet.
    pub fn ensure_thread(&self) -> std::io::Result<()> {
        let mut started = lock(&self.thread);
        if *started {
            return Ok(());
        }
        let state = self.state.clone();
        let wake = self.wake.clone();
        let deliver_lock = self.deliver_lock.clone();
        std::thread::Builder::new()
            .name("fake-cloud-moves".into())
            .spawn(move || run(&state, &wake, &deliver_lock))
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("fake cloud: starting the move thread: {e}"),
                )
            })?;
        *started = true;
        Ok(())
    }

    /// Tells the thread the schedule changed.
    pub fn wake(&self) {
        self.wake.notify_all();
    }

    /// Calls the subscribers with every move applied and not yet delivered, in order. Subscribers run on
    /// the calling thread, outside the state lock.
    pub fn deliver(&self) {
        deliver(&self.state, &self.deliver_lock);
    }
}

impl<S: MoveHost> Drop for Mover<S> {
    fn drop(&mut self) {
        lock(&self.state).timing().stop = true;
        self.wake.notify_all();
    }
}

fn deliver<S: MoveHost>(state: &Mutex<S>, deliver_lock: &Mutex<()>) {
    // One deliverer at a time: moves reach subscribers in the order they were applied, whichever thread
    // applied them (a GARP watcher, an in-process announcement, the move thread).
    let _one = lock(deliver_lock);
    let (moves, subscribers) = lock(state).timing().take_deliveries();
    for mv in &moves {
        for s in &subscribers {
            s(mv);
        }
    }
}

fn run<S: MoveHost>(state: &Mutex<S>, wake: &Condvar, deliver_lock: &Mutex<()>) {
    let mut st = lock(state);
    loop {
        if st.timing().stop {
            return;
        }
        let now = Instant::now();
        let due = st.timing().take_due(now);
        if !due.is_empty() {
            for mv in due {
                st.apply(mv);
            }
            drop(st);
            deliver(state, deliver_lock);
            st = lock(state);
            continue;
        }
        st = match st.timing().next_due() {
            Some(t) => {
                wake.wait_timeout(st, t.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => wake.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn without_a_delay_an_accepted_garp_moves_at_once() {
        let mut t = MoveTiming::default();
        let now = Instant::now();

        let a = t.accept("havip-1", "ins-b", "eni-b", now);

        assert!(matches!(a, Accepted::Now(ref m) if m.to == "ins-b" && m.eni == "eni-b"));
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn a_repeat_from_the_same_sender_keeps_the_timer_and_another_sender_replaces_it() {
        let mut t = MoveTiming::default();
        t.set_delay(Duration::from_secs(5));
        let t0 = Instant::now();

        let first = t.accept("havip-1", "ins-b", "eni-b", t0);
        let repeat = t.accept("havip-1", "ins-b", "eni-b", t0 + Duration::from_secs(2));
        let due_b = t.next_due();
        let other = t.accept("havip-1", "ins-c", "eni-c", t0 + Duration::from_secs(3));

        let (Accepted::Scheduled { due }, Accepted::AlreadyPending { due: due_again }) =
            (&first, &repeat)
        else {
            panic!("scheduled, then already pending: {first:?}, {repeat:?}");
        };
        assert_eq!(due, due_again, "the repeat does not restart the timer");
        assert_eq!(due_b, Some(t0 + Duration::from_secs(5)));
        assert!(matches!(other, Accepted::Scheduled { .. }), "{other:?}");
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(8)));
        assert_eq!(t.pending("havip-1").map(|p| p.to.as_str()), Some("ins-c"));
    }

    #[test]
    fn due_moves_come_out_once_earliest_first() {
        let mut t = MoveTiming::default();
        t.set_delay(Duration::from_secs(1));
        let t0 = Instant::now();
        t.accept("havip-2", "ins-b", "eni-b", t0 + Duration::from_millis(10));
        t.accept("havip-1", "ins-c", "eni-c", t0);

        assert!(t.take_due(t0 + Duration::from_millis(999)).is_empty());
        let due = t.take_due(t0 + Duration::from_secs(2));

        let order: Vec<&str> = due.iter().map(|p| p.havip_id.as_str()).collect();
        assert_eq!(order, ["havip-1", "havip-2"]);
        assert!(t.take_due(t0 + Duration::from_secs(3)).is_empty());
    }

    #[test]
    fn the_holders_own_garp_cancels_a_pending_move_away_from_it() {
        let mut t = MoveTiming::default();
        t.set_delay(Duration::from_secs(5));
        let t0 = Instant::now();
        t.accept("havip-1", "ins-b", "eni-b", t0);

        let cancelled = t.holder_announced("havip-1");

        assert_eq!(cancelled.map(|p| p.to), Some("ins-b".to_owned()));
        assert!(t.take_due(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn the_rate_limit_drops_and_counts_frames_past_the_limit_per_mac_within_a_second() {
        let mut t = MoveTiming::default();
        t.set_rate_limit(Some(3));
        let t0 = tokio::time::Instant::now();

        let first: Vec<bool> = (0..5)
            .map(|i| t.admit_garp(MAC_A, t0 + Duration::from_millis(i * 100)))
            .collect();
        let other_mac = t.admit_garp(MAC_B, t0 + Duration::from_millis(500));
        let a_second_later = t.admit_garp(MAC_A, t0 + Duration::from_millis(1000));

        assert_eq!(first, [true, true, true, false, false]);
        assert!(other_mac, "the limit is per sender MAC");
        assert!(a_second_later, "the first frame left the window");
        assert_eq!(t.dropped(), 2);
    }

    #[test]
    fn no_rate_limit_looks_at_every_frame() {
        let mut t = MoveTiming::default();
        t.set_rate_limit(None);
        let now = tokio::time::Instant::now();

        assert!((0..1000).all(|_| t.admit_garp(MAC_A, now)));
        assert_eq!(t.dropped(), 0);
    }

    #[test]
    fn the_default_limit_lets_the_agents_burst_for_five_havips_through() {
        // 5 HAVIPs, each 4 rounds of 2 frames spread over 1 s (the `[announce]` defaults).
        let mut t = MoveTiming::default();
        let t0 = tokio::time::Instant::now();
        let mut admitted = 0;
        for round in 0..4u64 {
            for _havip in 0..5 {
                for _frame in 0..2 {
                    admitted += u32::from(
                        t.admit_garp(MAC_A, t0 + Duration::from_millis(round * 1000 / 3)),
                    );
                }
            }
        }

        assert_eq!(admitted, 40);
        assert_eq!(t.dropped(), 0);
    }
}
