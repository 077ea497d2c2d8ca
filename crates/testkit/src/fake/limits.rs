//! The fake's per-action rate limit: `RequestLimitExceeded` once an action has been answered `limit` times
//! in the last second, as the VPC API documents (20 requests per second per action per account).
//!
//! Owns the counting only; `vpc` asks it about every authenticated request and turns a refusal into the
//! API's error. The window slides (any second, not calendar seconds), so the fake is at least as strict as
//! a server that counts per calendar second.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The documented default: 20 requests per second per action.
pub const DEFAULT_RATE_LIMIT: u32 = 20;

const WINDOW: Duration = Duration::from_secs(1);

/// Per-action request counts over a sliding second.
#[derive(Debug)]
pub struct RateLimits {
    limit: Option<u32>,
    admitted: HashMap<String, VecDeque<Instant>>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new(Some(DEFAULT_RATE_LIMIT))
    }
}

impl RateLimits {
    /// At most `limit` requests per action per second; `None` = unlimited.
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            limit,
            admitted: HashMap::new(),
        }
    }

    /// Changes the limit (counts so far are kept).
    pub fn set_limit(&mut self, limit: Option<u32>) {
        self.limit = limit;
    }

    /// Admits one request of `action` at `now`, or says why not (the API's message). Refused requests do
    /// not count.
    pub fn admit(&mut self, action: &str, now: Instant) -> Result<(), String> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let log = self.admitted.entry(action.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            log.pop_front();
        }
        if log.len() >= limit as usize {
            return Err(format!(
                "Your current request times equals to `{}` in a second, which exceeds the frequency \
                 limit `{limit}` for a second. Please reduce the frequency of calls.",
                log.len() + 1
            ));
        }
        log.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_past_the_limit_in_a_second_is_refused_per_action() {
        let mut l = RateLimits::new(Some(2));
        let t0 = Instant::now();
        assert!(l.admit("A", t0).is_ok());
        assert!(l.admit("A", t0 + Duration::from_millis(10)).is_ok());
        let refused = l.admit("A", t0 + Duration::from_millis(20)).unwrap_err();
        assert!(refused.contains("`3` in a second"), "{refused}");
        assert!(
            l.admit("B", t0).is_ok(),
            "another action has its own budget"
        );
        // The window slides: a second after the first, one more fits.
        assert!(l.admit("A", t0 + Duration::from_millis(1000)).is_ok());
        assert!(l.admit("A", t0 + Duration::from_millis(1005)).is_err());
    }

    #[test]
    fn no_limit_admits_everything() {
        let mut l = RateLimits::new(None);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| l.admit("A", t0).is_ok()));
    }
}
