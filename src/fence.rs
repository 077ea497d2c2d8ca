//! The Redis-level fence: pause writes on the local Redis while this node is cut off from the Sentinel majority.
//!
//! Owns the two commands (`CLIENT PAUSE <ms> WRITE`, `CLIENT UNPAUSE`) and their timeouts. It does not decide
//! *when* to fence (see `reconcile`) and does not build connection settings (the daemon passes a ready
//! `redis::Client`, with the same ACL/TLS handling as the Sentinel connections).
//!
//! Why: after losing the majority, an isolated master still accepts writes from clients that reach it over
//! existing connections; Sentinel is about to promote another replica and turn this one into a replica, which
//! discards those writes. A pause that expires by itself (and is renewed while still cut off) cannot leave
//! the Redis stuck if the agent dies.

use std::time::Duration;

use redis::AsyncConnectionConfig;

/// Why a fence command failed.
#[derive(Debug, thiserror::Error)]
#[error("local redis at {addr}: {what}: {source}")]
pub struct FenceError {
    addr: String,
    what: &'static str,
    source: redis::RedisError,
}

/// Pauses and unpauses writes on one Redis.
#[derive(Debug, Clone)]
pub struct RedisFence {
    client: redis::Client,
    addr: String,
    pause: Duration,
    timeout: Duration,
}

impl RedisFence {
    /// A fence for the Redis behind `client` (`addr` is for messages). Each pause lasts `pause`; callers renew
    /// it at about half that while still cut off. `timeout` bounds connecting and each command.
    pub fn new(
        client: redis::Client,
        addr: impl Into<String>,
        pause: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            addr: addr.into(),
            pause,
            timeout,
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

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, FenceError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|source| FenceError {
                addr: self.addr.clone(),
                what: "connect",
                source,
            })
    }

    /// `CLIENT PAUSE <pause-ms> WRITE`: writes (and scripts that may write) block until the pause ends; reads go on.
    pub async fn pause_writes(&self) -> Result<(), FenceError> {
        let mut c = self.conn().await?;
        let ms = self.pause.as_millis().max(1) as u64;
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query_async::<()>(&mut c)
            .await
            .map_err(|source| FenceError {
                addr: self.addr.clone(),
                what: "CLIENT PAUSE WRITE",
                source,
            })
    }

    /// `CLIENT UNPAUSE`.
    pub async fn unpause(&self) -> Result<(), FenceError> {
        let mut c = self.conn().await?;
        redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async::<()>(&mut c)
            .await
            .map_err(|source| FenceError {
                addr: self.addr.clone(),
                what: "CLIENT UNPAUSE",
                source,
            })
    }
}
