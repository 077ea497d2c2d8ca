//! The executor: carries out one HAVIP's actions, the same way for the daemon and `migrate-havip`.
//!
//! Owns *how* an action happens: a claim and a release through [`Claimer`] (cloud client + [`LocalNet`],
//! with the per-HAVIP lock taken inside), a write pause through [`WriteFence`] recorded in the
//! [`PauseLedger`], and reading this node's side ([`Local`]) for the next decision. It does not decide
//! anything (see `reconcile`) nor schedule anything (the daemon runs claims in the background, the script
//! inline).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::claim::{ClaimError, ClaimOptions, ClaimOutcome, Claimer};
use crate::config::{Config, HavipConfig};
use crate::fence::{FenceError, PauseLedger, RedisFence, WriteFence};
use crate::net::{Change, LocalNet, NetError};
use crate::reconcile::Local;
use crate::sentinel::conn::ConnectOptions;

/// The Redis-level fence of this node: which Redis, how to reach it, how long a pause lasts.
#[derive(Debug, Clone)]
pub struct FenceSetup {
    opts: ConnectOptions,
    address: Option<String>,
    me: IpAddr,
    pause: Duration,
    ledger: PauseLedger,
}

impl FenceSetup {
    /// The fence `[redis]` configures (None without `[redis]` or with `pause_writes = false`). `pause` is the
    /// length of one pause: `redis.pause` for the daemon (it renews), longer for a one-shot that cannot.
    pub fn from_config(cfg: &Config, me: IpAddr, pause: Duration) -> Option<Self> {
        let r = cfg.redis.as_ref().filter(|r| r.pause_writes)?;
        Some(Self {
            opts: ConnectOptions::redis(r, &cfg.sentinel),
            address: r.address.clone(),
            me,
            pause,
            ledger: PauseLedger::new(&cfg.claim.lock_dir),
        })
    }

    /// The length of one pause.
    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// The local Redis: `redis.address`, else this node's address with the port Sentinel reports for it.
    pub fn redis_addr(&self, port: Option<u16>) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| SocketAddr::new(self.me, port.unwrap_or(6379)).to_string())
    }

    /// How much longer the pause recorded for the local Redis lasts (whoever set it), if one is in force.
    pub fn pause_left(&self, port: Option<u16>) -> Option<Duration> {
        self.ledger.left(&self.redis_addr(port), SystemTime::now())
    }

    fn fence(&self, port: Option<u16>) -> Arc<dyn WriteFence> {
        Arc::new(RedisFence::new(
            self.opts.clone(),
            self.redis_addr(port),
            self.pause,
        ))
    }
}

/// Carries out actions for this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    claimer: Claimer,
    fence: Option<FenceSetup>,
}

impl Executor {
    /// An executor claiming with `claimer` and fencing with `fence` (if configured).
    pub fn new(claimer: Claimer, fence: Option<FenceSetup>) -> Self {
        Self { claimer, fence }
    }

    /// The claimer (cloud client, local network, instance id).
    pub fn claimer(&self) -> &Claimer {
        &self.claimer
    }

    /// The local network.
    pub fn net(&self) -> &Arc<dyn LocalNet> {
        self.claimer.net()
    }

    /// Whether the Redis-level fence is configured.
    pub fn fences(&self) -> bool {
        self.fence.is_some()
    }

    /// The fence, if configured.
    pub fn fence_setup(&self) -> Option<&FenceSetup> {
        self.fence.as_ref()
    }

    /// This node's side for `havip` now: whether the VIP is bound, and the write pause in force on the local
    /// Redis (`port`: the port Sentinel reports for it), whoever set it.
    pub async fn local(&self, havip: &HavipConfig, port: Option<u16>) -> Result<Local, NetError> {
        let bound = self.claimer.net().is_bound(havip.vip).await?;
        Ok(Local {
            bound,
            pause_left: self.fence.as_ref().and_then(|f| f.pause_left(port)),
        })
    }

    /// Makes this node the holder (see `claim`); the lock is taken inside.
    pub async fn claim(
        &self,
        havip: &HavipConfig,
        opts: ClaimOptions,
    ) -> Result<ClaimOutcome, ClaimError> {
        self.claimer.claim(havip, opts).await
    }

    /// Removes the VIP from the interface (see `claim`); the lock is taken inside.
    pub async fn release(&self, havip: &HavipConfig) -> Result<Change, ClaimError> {
        self.claimer.release(havip).await
    }

    /// Pauses writes on the local Redis and records the pause. Returns the Redis address.
    pub async fn pause(&self, port: Option<u16>) -> Result<String, FenceError> {
        let Some(f) = &self.fence else {
            return Ok(String::new());
        };
        let fence = f.fence(port);
        fence.pause_writes().await?;
        let until = SystemTime::now() + fence.pause_length();
        if let Err(e) = f.ledger.record(fence.addr(), until) {
            tracing::warn!(redis = %fence.addr(), error = %e, "could not record the write pause in claim.lock_dir; the other front door will not see it");
        }
        Ok(fence.addr().to_owned())
    }

    /// Lifts the pause on the local Redis (whoever set it) and forgets it. Returns the Redis address.
    pub async fn unpause(&self, port: Option<u16>) -> Result<String, FenceError> {
        let Some(f) = &self.fence else {
            return Ok(String::new());
        };
        let fence = f.fence(port);
        fence.unpause().await?;
        if let Err(e) = f.ledger.clear(fence.addr()) {
            tracing::warn!(redis = %fence.addr(), error = %e, "could not clear the write pause record in claim.lock_dir");
        }
        Ok(fence.addr().to_owned())
    }
}
