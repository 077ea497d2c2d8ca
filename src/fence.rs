//! The Redis-level fence: pause writes on the local Redis while this node is cut off from the Sentinel majority.
//!
//! Owns the two commands (`CLIENT PAUSE <ms> WRITE`, `CLIENT UNPAUSE`). It does not decide *when* to fence
//! (see `reconcile`) and connects with the same ACL/TLS/timeout handling as the Sentinel connections
//! (`sentinel::conn`).
//!
//! Why: after losing the majority, an isolated master still accepts writes from clients that reach it over
//! existing connections; Sentinel is about to promote another replica and turn this one into a replica, which
//! discards those writes. A pause that expires by itself (and is renewed while still cut off) cannot leave
//! the Redis stuck if the agent dies.

use std::time::Duration;

use crate::sentinel::SentinelError;
use crate::sentinel::conn::{ConnectOptions, connect};

/// Why a fence command failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// No connection.
    #[error("local redis at {addr}: connect: {source}")]
    Connect {
        /// The Redis.
        addr: String,
        /// Why.
        source: SentinelError,
    },
    /// The command failed.
    #[error("local redis at {addr}: {command}: {source}")]
    Command {
        /// The Redis.
        addr: String,
        /// The command.
        command: &'static str,
        /// Why.
        source: redis::RedisError,
    },
}

/// Pauses and unpauses writes on one Redis.
#[derive(Debug, Clone)]
pub struct RedisFence {
    opts: ConnectOptions,
    addr: String,
    pause: Duration,
}

impl RedisFence {
    /// A fence for the Redis at `addr` (`host:port`). Each pause lasts `pause`; callers renew it at about half
    /// that while still cut off. `opts.timeout` bounds connecting and each command.
    pub fn new(opts: ConnectOptions, addr: impl Into<String>, pause: Duration) -> Self {
        Self {
            opts,
            addr: addr.into(),
            pause,
        }
    }

    /// The length of one pause.
    pub fn pause_length(&self) -> Duration {
        self.pause
    }

    /// The Redis address, for logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn run(&self, command: &'static str, args: &[String]) -> Result<(), FenceError> {
        let mut c =
            connect(&self.addr, &self.opts)
                .await
                .map_err(|source| FenceError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        let mut cmd = redis::cmd("CLIENT");
        for a in args {
            cmd.arg(a);
        }
        cmd.query_async::<()>(&mut c)
            .await
            .map_err(|source| FenceError::Command {
                addr: self.addr.clone(),
                command,
                source,
            })
    }

    /// `CLIENT PAUSE <pause-ms> WRITE`: writes (and scripts that may write) block until the pause ends; reads
    /// go on.
    pub async fn pause_writes(&self) -> Result<(), FenceError> {
        let ms = self.pause.as_millis().max(1).to_string();
        self.run("CLIENT PAUSE WRITE", &["PAUSE".into(), ms, "WRITE".into()])
            .await
    }

    /// `CLIENT UNPAUSE`.
    pub async fn unpause(&self) -> Result<(), FenceError> {
        self.run("CLIENT UNPAUSE", &["UNPAUSE".into()]).await
    }
}
