//! The client-side rate limiter: at most `rate` requests per action in any window of a second, shared by
//! every caller of one [`super::VpcClient`] (one per process).
//!
//! Owns the waiting for a send slot, bounded by the caller's deadline. It does not retry (the client
//! does) and does not know what the API answers.
//!
//! Why hand-written and not a token bucket (`governor`): the API counts requests "in a second" per action.
//! A bucket of `rate` tokens refilled at `rate`/s lets `2 × rate` through in one second (a full bucket,
//! then its refill), which the server refuses; a bucket of one token spaces a failover's burst of claims
//! `1/rate` apart and delays the tenth by almost half a second. A log of the last `rate` send times lets a
//! burst of up to `rate` go at once and then holds the next one until the oldest leaves the window: exactly
//! the rule the server applies, in a few lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The server's window, plus a margin for network jitter: two requests sent a second apart may arrive a
/// little closer together.
pub(crate) const WINDOW: Duration = Duration::from_millis(1050);

/// Per-action send slots.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: usize,
    window: Duration,
    /// Per action, the send times of its last `rate` requests (some may be in the future: reserved by
    /// callers that are waiting for them), oldest first.
    sent: Mutex<HashMap<&'static str, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// At most `rate` requests per action in any [`WINDOW`]. `rate` must be more than zero (the config
    /// checks it); zero is taken as one.
    pub(crate) fn new(rate: u32) -> Self {
        Self::with_window(rate, WINDOW)
    }

    pub(crate) fn with_window(rate: u32, window: Duration) -> Self {
        Self {
            rate: rate.max(1) as usize,
            window,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves the earliest send slot for `action`: `Ok(when)` to send at `when` (now or later), or
    /// `Err(when)` when that slot is past `deadline` (nothing is reserved then).
    pub(crate) fn reserve(
        &self,
        action: &'static str,
        now: Instant,
        deadline: Instant,
    ) -> Result<Instant, Instant> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let log = sent.entry(action).or_default();
        // Slots are handed out in order, so the log is sorted and only its last `rate` entries matter.
        let slot = if log.len() >= self.rate {
            now.max(log[log.len() - self.rate] + self.window)
        } else {
            now
        };
        if slot > deadline {
            return Err(slot);
        }
        log.push_back(slot);
        while log.len() > self.rate {
            log.pop_front();
        }
        Ok(slot)
    }

    /// Waits for a send slot for `action`; `false` (at once, without waiting) when the slot would come
    /// after `deadline`.
    pub(crate) async fn acquire(&self, action: &'static str, deadline: Instant) -> bool {
        let now = Instant::now();
        match self.reserve(action, now, deadline) {
            Ok(slot) => {
                if slot > now {
                    tracing::debug!(
                        action,
                        wait_ms = (slot - now).as_millis() as u64,
                        "waiting for a vpc api rate-limit slot"
                    );
                    tokio::time::sleep_until(slot).await;
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_up_to_the_rate_goes_at_once_and_the_next_waits_a_window() {
        let limiter = RateLimiter::with_window(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.reserve("A", t0, far), Ok(t0));
        }
        assert_eq!(
            limiter.reserve("A", t0, far),
            Ok(t0 + Duration::from_secs(1))
        );
        // Another action has its own budget.
        assert_eq!(limiter.reserve("B", t0, far), Ok(t0));
    }

    #[test]
    fn no_window_ever_holds_more_than_the_rate() {
        let limiter = RateLimiter::with_window(5, Duration::from_secs(1));
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(600);
        let slots: Vec<Instant> = (0..40)
            .map(|i| {
                let now = t0 + Duration::from_millis(i * 37);
                limiter.reserve("A", now, far).unwrap()
            })
            .collect();
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .filter(|t| **t < *s + Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 5,
                "{in_window} sends in the window from slot {i}"
            );
        }
    }

    #[test]
    fn a_slot_past_the_deadline_is_refused_and_not_reserved() {
        let limiter = RateLimiter::with_window(1, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.reserve("A", t0, t0), Ok(t0));
        let deadline = t0 + Duration::from_millis(500);
        assert_eq!(
            limiter.reserve("A", t0, deadline),
            Err(t0 + Duration::from_secs(1))
        );
        // Nothing was reserved: the next caller gets the same slot.
        assert_eq!(
            limiter.reserve("A", t0, t0 + Duration::from_secs(5)),
            Ok(t0 + Duration::from_secs(1))
        );
    }
}
