//! Watching Redis Sentinel: who is master, by the newest configuration, and can we still see a majority.
//!
//! Owns everything that talks to Sentinel: the reply and event parsers ([`parse`]), connections with
//! ACL/TLS and hard timeouts ([`conn`]), the per-Sentinel watch tasks ([`watcher`]), the one-shot
//! [`probe`] that gives the same view, and that view with its reading rules ([`snapshot`]). It does not decide what to do with that view (claiming, releasing, fencing):
//! that is the reconciler's job.
//!
//! The rules it implements (see `shared/reference/sentinel.md`):
//! - Events are only wake-ups. Every event, every (re)connect and every `poll_interval`, each Sentinel is
//!   asked `SENTINEL MASTER` + `SENTINEL GET-MASTER-ADDR-BY-NAME`, and its answer is published at once.
//! - The newest *corroborated* configuration (highest `config-epoch` among member Sentinels, confirmed by a
//!   second Sentinel or by `ROLE` at the named address) names the master; see [`snapshot`].
//! - A Sentinel that does not answer within `timeout` is unreachable, and both its connections are dropped,
//!   so silently stalled links are noticed in a few hundred milliseconds.

use std::net::IpAddr;
use std::time::Duration;

pub mod conn;
pub mod parse;
pub mod probe;
pub mod snapshot;
pub mod watcher;

pub use conn::{
    ConnectOptions, confirm_role, connect, connect_redis, ping, query, query_master, query_masters,
};
pub use parse::{EventError, PeerSentinel, ReplyError, parse_event};
pub use probe::{probe, probe_until};
pub use snapshot::{Corroboration, MasterConfig, MasterView, Newest, SentinelState, Snapshot};
pub use watcher::{ObservedEvent, WatchOptions, Watcher};

/// The Pub/Sub channels the watcher subscribes to: `+switch-master` and every event worth waking up for.
pub const WATCHED_CHANNELS: &[&str] = &[
    "+switch-master",
    "+odown",
    "-odown",
    "+try-failover",
    "+elected-leader",
    "+promoted-slave",
    "+failover-state-reconf-slaves",
    "+failover-end",
    "+failover-end-for-timeout",
    "+config-update-from",
    "+convert-to-slave",
    "+sdown",
    "-sdown",
    "+tilt",
    "-tilt",
];

/// The ACL rules a restricted Sentinel user needs for the watcher (`ACL SETUSER <user> on ><pass> ` + this):
/// the two queries, `PING`, `AUTH`, `HELLO`, `SUBSCRIBE`, and the watched channels.
pub fn watcher_acl_rules() -> String {
    let mut rules = String::from(
        "resetchannels -@all +sentinel|master +sentinel|get-master-addr-by-name +sentinel|sentinels \
         +sentinel|myid +subscribe +ping +auth +hello",
    );
    for ch in WATCHED_CHANNELS {
        rules.push_str(" &");
        rules.push_str(ch);
    }
    rules
}

/// One master as one Sentinel sees it.
///
/// `ip`/`port` come from `SENTINEL GET-MASTER-ADDR-BY-NAME`, everything else from `SENTINEL MASTER`: on the
/// failover leader, `config-epoch` is already bumped at `+promoted-slave` while `SENTINEL MASTER`'s `ip`
/// still shows the old master until `+switch-master`; `GET-MASTER-ADDR-BY-NAME` already answers the
/// promoted replica (`sentinelGetCurrentMasterAddress` in `src/sentinel.c`). Both are asked in one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInfo {
    /// The master name, as configured in Sentinel.
    pub name: String,
    /// The current master's address.
    pub ip: IpAddr,
    /// The current master's port.
    pub port: u16,
    /// `config-epoch`: the epoch of the configuration this Sentinel holds.
    pub config_epoch: u64,
    /// `flags`, split on commas (`master`, `s_down`, `o_down`, `failover_in_progress`, ...).
    pub flags: Vec<String>,
    /// `down-after-milliseconds`.
    pub down_after: Duration,
    /// Whether `flags` contains `failover_in_progress`.
    pub failover_in_progress: bool,
    /// `num-other-sentinels`.
    pub num_other_sentinels: u32,
    /// `quorum`.
    pub quorum: u32,
    /// The other Sentinels it lists for this master (`SENTINEL SENTINELS`); `None` when that answer failed
    /// (an ACL without `sentinel|sentinels`, garbage).
    pub peers: Option<Vec<PeerSentinel>>,
}

impl MasterInfo {
    /// The master's address as `ip:port` (IPv6 in brackets).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }
}

/// A Sentinel Pub/Sub event, parsed. Events are only wake-ups; the decisive data comes from the queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`.
    SwitchMaster {
        /// The master name.
        master: String,
        /// The old master's address.
        old: (IpAddr, u16),
        /// The new master's address.
        new: (IpAddr, u16),
    },
    /// `+promoted-slave slave <ip:port> <ip> <port> @ <master> <master-ip> <master-port>`: the leader saw the
    /// chosen replica take the master role.
    PromotedSlave {
        /// The master name.
        master: String,
        /// The promoted replica.
        addr: (IpAddr, u16),
    },
    /// `+config-update-from sentinel <id> <ip> <port> @ <master> ...`: this Sentinel adopted a newer
    /// configuration from another one (a `+switch-master` follows).
    ConfigUpdateFrom {
        /// The master name.
        master: String,
    },
    /// Any other watched event.
    Other {
        /// The channel, e.g. `+odown`.
        channel: String,
        /// The master the event is about, when the payload names one (`+tilt` does not).
        master: Option<String>,
    },
}

impl Event {
    /// The master this event is about, if any.
    pub fn master(&self) -> Option<&str> {
        match self {
            Event::SwitchMaster { master, .. }
            | Event::PromotedSlave { master, .. }
            | Event::ConfigUpdateFrom { master } => Some(master),
            Event::Other { master, .. } => master.as_deref(),
        }
    }
}

/// Why talking to a Sentinel (or, for [`confirm_role`], a Redis) failed. `peer` reads like
/// `sentinel 10.0.0.1:26379`.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// The configured address is not `host:port`.
    #[error("{peer}: bad address: {problem}")]
    BadAddress {
        /// The peer.
        peer: String,
        /// What is wrong.
        problem: String,
    },
    /// A TLS file from the config could not be read.
    #[error("{peer}: cannot read tls file {path}: {detail}")]
    TlsFile {
        /// The peer.
        peer: String,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        detail: String,
    },
    /// Connecting (TCP, TLS handshake, `AUTH`) failed.
    #[error("{peer}: cannot connect: {detail}")]
    Connect {
        /// The peer.
        peer: String,
        /// The cause, e.g. `Connection refused` or `WRONGPASS ...`.
        detail: String,
    },
    /// No answer within the configured timeout: the link is treated as dead.
    #[error("{peer}: {what} timed out after {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// What was waited for: `connect`, `ping`, `query`, `subscribe`, `role`.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The connection broke, or the peer refused a command the link needs (e.g. `PING` denied).
    #[error("{peer}: {what} failed: {detail}")]
    Link {
        /// The peer.
        peer: String,
        /// The command.
        what: &'static str,
        /// The cause.
        detail: String,
    },
    /// The peer answered, but not usefully (an error reply, or a reply of the wrong shape).
    #[error("{peer}: {source}")]
    Reply {
        /// The peer.
        peer: String,
        /// What is wrong with the reply.
        source: ReplyError,
    },
}

impl SentinelError {
    /// Whether the link itself is in doubt (connect failure, timeout, broken connection), as opposed to a
    /// bad answer on a working link.
    pub fn is_link(&self) -> bool {
        !matches!(self, SentinelError::Reply { .. })
    }
}
