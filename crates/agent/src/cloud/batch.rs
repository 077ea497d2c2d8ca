//! Coalescing of concurrent calls into batched requests, transparent to callers.
//!
//! Owns the queue: while one request of a kind is in flight, later callers wait in the queue; when it
//! returns, everything queued goes out as the next request (at most `max` items). A lone caller goes at
//! once, so batching adds no latency when there is nothing to batch. It does not know the API: the client
//! decides how a batch is sent and how its answer is split per caller (see `client`).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// One caller waiting for its share of a batch.
pub(crate) struct Waiter<I, O> {
    /// What the caller asked for.
    pub item: I,
    /// The caller's deadline.
    pub deadline: Instant,
    tx: oneshot::Sender<O>,
}

impl<I, O> Waiter<I, O> {
    /// Hands the caller its result (ignored when the caller has given up).
    pub fn answer(self, out: O) {
        let _ = self.tx.send(out);
    }
}

/// A queue of callers and whether a driver is sending their batches.
pub(crate) struct Coalescer<I, O> {
    max: usize,
    state: Mutex<State<I, O>>,
}

struct State<I, O> {
    driving: bool,
    queue: VecDeque<Waiter<I, O>>,
}

impl<I, O> Coalescer<I, O> {
    /// Batches of at most `max` items (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            state: Mutex::new(State {
                driving: false,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Queues a caller. Returns its receiver and whether the caller must start a driver (nothing was in
    /// flight): the driver then calls [`Coalescer::next_batch`] until it says `None`.
    pub fn push(&self, item: I, deadline: Instant) -> (oneshot::Receiver<O>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.queue.push_back(Waiter { item, deadline, tx });
        let start = !st.driving;
        st.driving = true;
        (rx, start)
    }

    /// The next batch: up to `max` queued callers that are still waiting (callers that gave up are
    /// dropped, so a cancelled request is never sent). `None` when the queue is empty; the driver must stop
    /// then, and the next caller starts a new one.
    pub fn next_batch(&self) -> Option<Vec<Waiter<I, O>>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        while batch.len() < self.max {
            match st.queue.pop_front() {
                Some(w) if w.tx.is_closed() => continue,
                Some(w) => batch.push(w),
                None => break,
            }
        }
        if batch.is_empty() {
            st.driving = false;
            None
        } else {
            Some(batch)
        }
    }
}

/// The latest deadline of a batch's callers: the batch's one request may take as long as its most
/// patient caller waits (the others stop listening at their own deadlines).
pub(crate) fn latest_deadline<I, O>(batch: &[Waiter<I, O>]) -> Instant {
    batch
        .iter()
        .map(|w| w.deadline)
        .max()
        .unwrap_or_else(Instant::now)
}

/// Answers every caller of a batch with the same result: its one request succeeded or failed as a whole.
pub(crate) fn answer_all<I, O: Clone>(batch: Vec<Waiter<I, O>>, out: O) {
    for w in batch {
        w.answer(out.clone());
    }
}

/// Answers each caller of a batch with its own result, in the batch's order.
pub(crate) fn answer_each<I, O>(batch: Vec<Waiter<I, O>>, answers: impl IntoIterator<Item = O>) {
    for (w, answer) in batch.into_iter().zip(answers) {
        w.answer(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_caller_drives_and_later_ones_queue_into_one_batch() {
        let c: Coalescer<u32, u32> = Coalescer::new(2);
        let now = Instant::now();
        let (_rx1, start1) = c.push(1, now);
        assert!(start1);
        let first = c.next_batch().unwrap();
        assert_eq!(first.iter().map(|w| w.item).collect::<Vec<_>>(), [1]);
        // In flight: later callers do not start drivers, and go out together (at most `max`).
        let (_rx2, s2) = c.push(2, now);
        let (_rx3, s3) = c.push(3, now);
        let (_rx4, s4) = c.push(4, now);
        assert!(!s2 && !s3 && !s4);
        let second = c.next_batch().unwrap();
        assert_eq!(second.iter().map(|w| w.item).collect::<Vec<_>>(), [2, 3]);
        let third = c.next_batch().unwrap();
        assert_eq!(third.iter().map(|w| w.item).collect::<Vec<_>>(), [4]);
        assert!(c.next_batch().is_none());
        // Idle again: the next caller drives.
        let (_rx5, s5) = c.push(5, now);
        assert!(s5);
    }

    #[test]
    fn callers_that_gave_up_are_not_sent() {
        let c: Coalescer<u32, u32> = Coalescer::new(10);
        let now = Instant::now();
        let (rx1, _) = c.push(1, now);
        let (_rx2, _) = c.push(2, now);
        drop(rx1);
        let batch = c.next_batch().unwrap();
        assert_eq!(batch.iter().map(|w| w.item).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn a_batch_runs_to_its_latest_deadline_and_each_caller_gets_its_own_answer() {
        let c: Coalescer<u32, u32> = Coalescer::new(10);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(5);
        let (rx1, _) = c.push(1, later);
        let (rx2, _) = c.push(2, now);
        let batch = c.next_batch().unwrap();
        assert_eq!(latest_deadline(&batch), later);
        answer_each(batch, [10, 20]);
        assert_eq!((rx1.await.unwrap(), rx2.await.unwrap()), (10, 20));

        let (rx3, _) = c.push(3, now);
        let (rx4, _) = c.push(4, now);
        answer_all(c.next_batch().unwrap(), 7);
        assert_eq!((rx3.await.unwrap(), rx4.await.unwrap()), (7, 7));
    }
}
