//! [`RecordingNet`]: an in-memory [`LocalNet`] for tests and for the demo, which runs without root.
//!
//! Owns a simulated interface (a set of addresses and a MAC) and a log of everything done to it, each entry
//! stamped with a tokio [`Instant`] (so paused-time tests can assert exact schedules) and a wall-clock
//! [`SystemTime`] from an injectable [`Clock`](havip_agent::clock::Clock). Tests can change the interface behind the agent's back (drift)
//! and inject failures. Does not simulate the network: no frame leaves the process.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::time::Instant;

use havip_agent::clock::{SharedClock, SystemClock};
use havip_agent::config::VipCidr;
use havip_agent::net::{Change, LocalNet, NetError};

/// The operations of [`LocalNet`], for failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetOp {
    /// [`LocalNet::is_bound`].
    IsBound,
    /// [`LocalNet::bind`].
    Bind,
    /// [`LocalNet::unbind`].
    Unbind,
    /// [`LocalNet::announce_round`].
    Announce,
}

/// One thing that happened to the simulated interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A successful [`LocalNet::bind`] and what it did.
    Bind {
        /// The VIP.
        vip: VipCidr,
        /// Applied or already done.
        change: Change,
    },
    /// A successful [`LocalNet::unbind`] and what it did.
    Unbind {
        /// The VIP.
        vip: VipCidr,
        /// Applied or already done.
        change: Change,
    },
    /// A successful [`LocalNet::announce_round`].
    Announce {
        /// The announced address.
        vip: Ipv4Addr,
        /// Frames "sent" (always 2: request and reply).
        frames: u32,
    },
    /// A call that failed because of an injected failure.
    Failed {
        /// The operation.
        op: NetOp,
        /// The error's text.
        error: String,
    },
    /// The test changed the interface behind the agent's back ([`RecordingNet::remove_behind_back`] or
    /// [`RecordingNet::add_behind_back`]).
    External {
        /// The address.
        vip: Ipv4Addr,
        /// True: added; false: removed.
        added: bool,
    },
}

/// A [`NetEvent`] with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Tokio time (follows `tokio::time::pause`/`advance`).
    pub at: Instant,
    /// Wall-clock time from the net's clock.
    pub wall: SystemTime,
    /// What happened.
    pub event: NetEvent,
}

type MakeError = Box<dyn Fn() -> NetError + Send + Sync>;

struct Failure {
    make: MakeError,
    /// `None`: every call fails until cleared.
    remaining: Option<u32>,
}

#[derive(Default)]
struct Inner {
    bound: Vec<VipCidr>,
    events: Vec<Recorded>,
    failures: HashMap<NetOp, Failure>,
}

/// A simulated interface that records what the agent does to it. [`LocalNet::simulated`] is true.
pub struct RecordingNet {
    ifname: String,
    mac: [u8; 6],
    clock: SharedClock,
    inner: Mutex<Inner>,
    /// Bumped on every recorded event, so tests can wait for one without sleeping.
    seq: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for RecordingNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("RecordingNet")
            .field("ifname", &self.ifname)
            .field("bound", &inner.bound)
            .field("events", &inner.events.len())
            .field("failing", &inner.failures.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RecordingNet {
    /// A simulated interface `ifname` with no addresses, MAC `02:00:00:00:00:01`, the system wall clock.
    pub fn new(ifname: &str) -> Self {
        RecordingNet {
            ifname: ifname.to_owned(),
            mac: [0x02, 0, 0, 0, 0, 0x01],
            clock: std::sync::Arc::new(SystemClock),
            inner: Mutex::new(Inner::default()),
            seq: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Uses `mac` as the interface MAC (e.g. to feed a fake cloud's GARP handling).
    pub fn with_mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = mac;
        self
    }

    /// Stamps events with this wall clock (e.g. a [`havip_agent::clock::TokioClock`]).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The simulated MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Everything recorded so far, oldest first.
    pub fn events(&self) -> Vec<Recorded> {
        self.lock().events.clone()
    }

    /// Forgets the recorded events (the addresses stay).
    pub fn clear_events(&self) {
        self.lock().events.clear();
    }

    /// The addresses currently on the simulated interface, in the order they were added.
    pub fn bound(&self) -> Vec<VipCidr> {
        self.lock().bound.clone()
    }

    /// When each announcement round for `vip` happened, oldest first.
    pub fn announcements(&self, vip: Ipv4Addr) -> Vec<Instant> {
        self.lock()
            .events
            .iter()
            .filter(|r| matches!(r.event, NetEvent::Announce { vip: v, .. } if v == vip))
            .map(|r| r.at)
            .collect()
    }

    /// The binds and unbinds that changed something (`Change::Applied`), oldest first.
    pub fn applied_changes(&self) -> Vec<Recorded> {
        self.lock()
            .events
            .iter()
            .filter(|r| {
                matches!(
                    r.event,
                    NetEvent::Bind {
                        change: Change::Applied,
                        ..
                    } | NetEvent::Unbind {
                        change: Change::Applied,
                        ..
                    }
                )
            })
            .cloned()
            .collect()
    }

    /// Removes `vip` from the simulated interface without the agent knowing (an operator's `ip addr del`, a
    /// network restart). Returns whether it was there.
    pub fn remove_behind_back(&self, vip: Ipv4Addr) -> bool {
        let mut inner = self.lock();
        let before = inner.bound.len();
        inner.bound.retain(|b| b.addr != vip);
        let removed = inner.bound.len() != before;
        if removed {
            self.record(&mut inner, NetEvent::External { vip, added: false });
        }
        removed
    }

    /// Adds `vip` to the simulated interface without the agent knowing (a stale address left over from an
    /// earlier run). Returns whether it was absent.
    pub fn add_behind_back(&self, vip: VipCidr) -> bool {
        let mut inner = self.lock();
        if inner.bound.iter().any(|b| b.addr == vip.addr) {
            return false;
        }
        inner.bound.push(vip);
        self.record(
            &mut inner,
            NetEvent::External {
                vip: vip.addr,
                added: true,
            },
        );
        true
    }

    /// Makes `op` fail with `make()` for the next `times` calls (`None`: until [`Self::clear_failures`]).
    pub fn fail(
        &self,
        op: NetOp,
        times: Option<u32>,
        make: impl Fn() -> NetError + Send + Sync + 'static,
    ) {
        self.lock().failures.insert(
            op,
            Failure {
                make: Box::new(make),
                remaining: times,
            },
        );
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Waits until `pred` holds for the recorded events or `deadline` passes; returns whether it held.
    pub async fn wait_until(&self, deadline: Instant, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let mut rx = self.seq.subscribe();
        loop {
            if pred(&self.lock().events) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or the sender is gone, which cannot happen while `self` lives).
                _ => return pred(&self.lock().events),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, inner: &mut Inner, event: NetEvent) {
        inner.events.push(Recorded {
            at: Instant::now(),
            wall: self.clock.now(),
            event,
        });
        self.seq.send_modify(|s| *s += 1);
    }

    /// Applies an injected failure for `op`, if any, recording it.
    fn injected(&self, inner: &mut Inner, op: NetOp) -> Result<(), NetError> {
        let Some(f) = inner.failures.get_mut(&op) else {
            return Ok(());
        };
        let err = (f.make)();
        match &mut f.remaining {
            Some(0) => {
                inner.failures.remove(&op);
                return Ok(());
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    inner.failures.remove(&op);
                }
            }
            None => {}
        }
        self.record(
            inner,
            NetEvent::Failed {
                op,
                error: err.to_string(),
            },
        );
        Err(err)
    }
}

#[async_trait::async_trait]
impl LocalNet for RecordingNet {
    fn interface(&self) -> &str {
        &self.ifname
    }

    fn simulated(&self) -> bool {
        true
    }

    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError> {
        let mut inner = self.lock();
        self.injected(&mut inner, NetOp::IsBound)?;
        Ok(inner.bound.iter().any(|b| b.addr == vip.addr))
    }

    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let mut inner = self.lock();
        self.injected(&mut inner, NetOp::Bind)?;
        let change = if inner.bound.iter().any(|b| b.addr == vip.addr) {
            Change::AlreadyDone
        } else {
            inner.bound.push(vip);
            Change::Applied
        };
        self.record(&mut inner, NetEvent::Bind { vip, change });
        Ok(change)
    }

    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let mut inner = self.lock();
        self.injected(&mut inner, NetOp::Unbind)?;
        let before = inner.bound.len();
        inner.bound.retain(|b| b.addr != vip.addr);
        let change = if inner.bound.len() == before {
            Change::AlreadyDone
        } else {
            Change::Applied
        };
        self.record(&mut inner, NetEvent::Unbind { vip, change });
        Ok(change)
    }

    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError> {
        let mut inner = self.lock();
        self.injected(&mut inner, NetOp::Announce)?;
        self.record(&mut inner, NetEvent::Announce { vip, frames: 2 });
        Ok(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use havip_agent::net::announce_burst;
    use std::time::Duration;

    fn vip(s: &str) -> VipCidr {
        s.parse().expect("test vip")
    }

    #[tokio::test]
    async fn bind_is_idempotent_and_exact() {
        let net = RecordingNet::new("eth0");
        assert_eq!(
            net.bind(vip("198.18.0.1/24")).await.unwrap(),
            Change::Applied
        );
        assert_eq!(
            net.bind(vip("198.18.0.1/24")).await.unwrap(),
            Change::AlreadyDone
        );
        assert!(!net.is_bound(vip("198.18.0.10/24")).await.unwrap());
        assert_eq!(net.bound(), vec![vip("198.18.0.1/24")]);
        assert_eq!(net.applied_changes().len(), 1);
    }

    #[tokio::test]
    async fn drift_behind_the_back_is_visible_to_is_bound() {
        let net = RecordingNet::new("eth0");
        net.bind(vip("198.18.0.1/24")).await.unwrap();
        assert!(net.remove_behind_back(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!net.is_bound(vip("198.18.0.1/24")).await.unwrap());
        assert_eq!(
            net.unbind(vip("198.18.0.1/24")).await.unwrap(),
            Change::AlreadyDone
        );
    }

    #[tokio::test]
    async fn injected_failure_is_returned_counted_and_recorded() {
        let net = RecordingNet::new("eth0");
        net.fail(NetOp::Bind, Some(1), || NetError::Netlink("boom".into()));
        assert!(matches!(
            net.bind(vip("198.18.0.1/24")).await,
            Err(NetError::Netlink(_))
        ));
        assert_eq!(
            net.bind(vip("198.18.0.1/24")).await.unwrap(),
            Change::Applied
        );
        assert!(matches!(
            net.events()[0].event,
            NetEvent::Failed {
                op: NetOp::Bind,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_rounds_follow_the_schedule_exactly_in_paused_time() {
        let net = RecordingNet::new("eth0");
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let start = Instant::now();
        let frames = announce_burst(&net, ip, 4, Duration::from_millis(900))
            .await
            .unwrap();
        assert_eq!(frames, 8);
        let offsets: Vec<_> = net.announcements(ip).iter().map(|t| *t - start).collect();
        assert_eq!(
            offsets,
            [0, 300, 600, 900].map(Duration::from_millis).to_vec()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_stops_at_the_first_failed_round() {
        let net = RecordingNet::new("eth0");
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        net.fail(NetOp::Announce, None, || {
            NetError::NoSuchInterface("eth0".into())
        });
        let r = announce_burst(&net, ip, 3, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(NetError::NoSuchInterface(_))));
        assert_eq!(
            net.events().len(),
            1,
            "one failed round, no more: {:?}",
            net.events()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_sees_an_event_recorded_later() {
        let net = std::sync::Arc::new(RecordingNet::new("eth0"));
        let n2 = net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            n2.bind("198.18.0.1/24".parse().unwrap()).await.unwrap();
        });
        let ok = net
            .wait_until(Instant::now() + Duration::from_secs(5), |ev| !ev.is_empty())
            .await;
        assert!(ok);
    }
}
