//! Wall-clock time as an injectable value.
//!
//! Signing needs the real wall clock (`X-TC-Timestamp`), credential expiry compares against it, and tests
//! need to move it without waiting. Monotonic timing (deadlines, backoff) uses `tokio::time` directly.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// Shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that starts at a given time and advances with tokio's clock, so that
/// `tokio::time::pause()` and `advance()` move it too. For tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_wall: SystemTime,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now, advancing with `tokio::time`.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            base_wall: start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base_wall + self.base.elapsed()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Seconds since the Unix epoch of a `SystemTime` (0 before the epoch).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
