//! The analysis workers: a fixed number of CPU permits, granted earliest deadline first.
//!
//! Decoding and inference are CPU-bound, so the box runs as many at once as it has cores. An
//! alarm takes a permit for each step of its analysis and gives it back while it waits for video,
//! so a storm's alarms interleave; the one whose deadline is nearest goes first. The pool also
//! learns what one alarm costs, so that an alarm that can no longer be finished in time is told
//! at once rather than run late.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// What one alarm is assumed to cost until the first have been measured.
const FIRST_ESTIMATE: Duration = Duration::from_millis(500);
/// The least a step is assumed to need, however cheap alarms have been.
const MIN_STEP: Duration = Duration::from_millis(50);

pub struct Workers {
    inner: Mutex<Inner>,
    count: usize,
}

struct Inner {
    free: usize,
    waiting: BinaryHeap<Waiter>,
    next_seq: u64,
    /// Moving average of the permit time one whole alarm takes.
    alarm_cost: Duration,
}

struct Waiter {
    deadline: Instant,
    seq: u64,
    grant: oneshot::Sender<Permit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    // BinaryHeap is a max-heap: the earliest deadline (then the earliest arrival) must be greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// The right to run one step of analysis; given back (to the most urgent waiter) when dropped.
pub struct Permit {
    pool: Option<Arc<Workers>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release();
        }
    }
}

/// The pool gave up on an alarm: it would not be finished by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("overloaded: {waiting} more alarms waiting for {workers} analysis workers; not verifiable before the deadline")]
pub struct Overloaded {
    pub waiting: usize,
    pub workers: usize,
}

impl Workers {
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            count: count.max(1),
            inner: Mutex::new(Inner {
                free: count.max(1),
                waiting: BinaryHeap::new(),
                next_seq: 0,
                alarm_cost: FIRST_ESTIMATE,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::support::lock(&self.inner)
    }

    /// What the rest of an alarm that has used `spent` of permit time is expected to need.
    pub fn remaining_estimate(&self, spent: Duration) -> Duration {
        self.lock().alarm_cost.saturating_sub(spent).max(MIN_STEP)
    }

    /// Records the permit time a whole alarm took.
    pub fn record_alarm_cost(&self, cost: Duration) {
        let mut inner = self.lock();
        inner.alarm_cost = (inner.alarm_cost * 3 + cost) / 4;
    }

    /// Waits for a permit, served earliest `deadline` first. Gives up when the work still needed
    /// (`need`) could no longer be done by the deadline.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant, need: Duration) -> Result<Permit, Overloaded> {
        let latest_start = deadline.checked_sub(need).unwrap_or_else(Instant::now);
        let receiver = {
            let mut inner = self.lock();
            if inner.free > 0 && inner.waiting.is_empty() {
                inner.free -= 1;
                return Ok(Permit {
                    pool: Some(self.clone()),
                });
            }
            let (grant, receiver) = oneshot::channel();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.waiting.push(Waiter { deadline, seq, grant });
            receiver
        };
        match tokio::time::timeout_at(latest_start, receiver).await {
            Ok(Ok(permit)) => Ok(permit),
            // The receiver is dropped here: a permit granted meanwhile goes back to the pool.
            _ => {
                let mut inner = self.lock();
                // Waiters that gave up stay in the heap until a release passes them; drop them here.
                inner.waiting.retain(|w| !w.grant.is_closed());
                Err(Overloaded {
                    waiting: inner.waiting.len(),
                    workers: self.count,
                })
            }
        }
    }

    fn release(self: Arc<Self>) {
        let mut inner = self.lock();
        while let Some(waiter) = inner.waiting.pop() {
            let permit = Permit {
                pool: Some(self.clone()),
            };
            match waiter.grant.send(permit) {
                Ok(()) => return,
                // That waiter gave up; defuse the permit it did not take and try the next.
                Err(mut unsent) => unsent.pool = None,
            }
        }
        inner.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_go_to_the_earliest_deadline_first() {
        let pool = Workers::new(1);
        let now = Instant::now();
        let held = pool
            .acquire(now + Duration::from_secs(10), MIN_STEP)
            .await
            .expect("free");
        let (late_pool, early_pool) = (pool.clone(), pool.clone());
        let late = tokio::spawn(async move {
            let _p = late_pool.acquire(now + Duration::from_secs(9), MIN_STEP).await;
            Instant::now()
        });
        let early = tokio::spawn(async move {
            let _p = early_pool.acquire(now + Duration::from_secs(5), MIN_STEP).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let (late, early) = (late.await.expect("late"), early.await.expect("early"));
        assert!(early <= late, "the nearer deadline was served after the later one");
    }

    #[tokio::test]
    async fn an_alarm_that_cannot_finish_in_time_is_refused_early() {
        let pool = Workers::new(1);
        let now = Instant::now();
        let _held = pool
            .acquire(now + Duration::from_secs(10), MIN_STEP)
            .await
            .expect("free");
        let refused = pool
            .acquire(now + Duration::from_millis(300), Duration::from_millis(200))
            .await;
        assert!(refused.is_err());
        assert!(
            now.elapsed() < Duration::from_millis(250),
            "refused only at {:?}",
            now.elapsed()
        );
    }

    #[tokio::test]
    async fn a_permit_granted_to_a_waiter_that_gave_up_returns_to_the_pool() {
        let pool = Workers::new(1);
        let now = Instant::now();
        let held = pool
            .acquire(now + Duration::from_secs(10), MIN_STEP)
            .await
            .expect("free");
        let _ = pool.acquire(now + Duration::from_millis(100), MIN_STEP).await;
        drop(held);
        let again = tokio::time::timeout(
            Duration::from_millis(200),
            pool.acquire(now + Duration::from_secs(10), MIN_STEP),
        );
        assert!(matches!(again.await, Ok(Ok(_))), "the permit was lost");
    }
}
