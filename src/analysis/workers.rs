//! The analysis workers: a fixed number of CPU permits, granted to the likely intrusions first,
//! then earliest deadline first.
//!
//! Decoding and inference are CPU-bound, so the box runs as many at once as it has cores. An
//! alarm takes a permit for each step of its analysis and gives it back while it waits for video,
//! so a storm's alarms interleave. Work that is cheap and decides most (a first look at each
//! alarm, and the alarms where that look saw someone) goes before the long windows of the alarms
//! that are probably false; among equals the nearest deadline goes first.
//!
//! Each analysis also books the worker time it still needs. An alarm whose work does not fit
//! before its deadline, behind the work booked ahead of it, is told `overloaded` at once: then no
//! worker time goes into an analysis that would end late, and the alarms that can be finished are.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// What one alarm is assumed to cost until the first have been measured.
const FIRST_ESTIMATE: Duration = Duration::from_millis(500);
/// The least a step is assumed to need, however cheap alarms have been.
pub const MIN_STEP: Duration = Duration::from_millis(50);

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
    /// The worker time each running analysis still needs, by booking number.
    booked: HashMap<u64, Booked>,
}

#[derive(Clone, Copy)]
struct Booked {
    urgency: Urgency,
    deadline: Instant,
    need: Duration,
}

impl Booked {
    fn goes_before(&self, other: &Booked) -> bool {
        (self.urgency, self.deadline) <= (other.urgency, other.deadline)
    }
}

/// An analysis's booking of worker time; kept up to date as it goes, and cancelled when dropped.
pub struct Booking {
    pool: Arc<Workers>,
    id: u64,
}

impl Booking {
    /// Books what the analysis still needs, and how urgent it is now; refused (and the booking
    /// cancelled) when that no longer fits before its deadline behind the work booked ahead of it.
    pub fn update(&self, need: Duration, urgency: Urgency) -> Result<(), Overloaded> {
        let mut inner = self.pool.lock();
        let Some(mut booked) = inner.booked.remove(&self.id) else {
            return Err(self.pool.overloaded(&inner, 0));
        };
        booked.need = need;
        booked.urgency = urgency;
        self.pool.fits(&inner, &booked)?;
        inner.booked.insert(self.id, booked);
        Ok(())
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        self.pool.lock().booked.remove(&self.id);
    }
}

/// Which work goes first when alarms wait for workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// A first look at an alarm, or an alarm where it saw a target: short work that verifies.
    Likely,
    /// Everything else, by deadline: mostly the full windows of false alarms.
    Normal,
}

struct Waiter {
    urgency: Urgency,
    deadline: Instant,
    seq: u64,
    grant: oneshot::Sender<Permit>,
}

impl Waiter {
    fn key(&self) -> (Urgency, Instant, u64) {
        (self.urgency, self.deadline, self.seq)
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    // BinaryHeap is a max-heap: the most urgent, then the earliest deadline, then the earliest
    // arrival must be greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
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
                booked: HashMap::new(),
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

    /// Whether work is waiting for a worker, or all are taken: optional work (the idle view
    /// checks, a first look) is worth doing, or must give way.
    pub fn is_contended(&self) -> bool {
        let inner = self.lock();
        inner.free == 0 || !inner.waiting.is_empty()
    }

    /// Records the permit time a whole alarm took.
    pub fn record_alarm_cost(&self, cost: Duration) {
        let mut inner = self.lock();
        inner.alarm_cost = (inner.alarm_cost * 3 + cost) / 4;
    }

    /// Books `need` of worker time before `deadline`, if it fits behind the work booked ahead of
    /// it (more urgent, or due sooner) on all the workers together; else the alarm is overloaded.
    pub fn book(self: &Arc<Self>, deadline: Instant, need: Duration, urgency: Urgency) -> Result<Booking, Overloaded> {
        let mut inner = self.lock();
        let this = Booked {
            urgency,
            deadline,
            need,
        };
        self.fits(&inner, &this)?;
        let id = inner.next_seq;
        inner.next_seq += 1;
        inner.booked.insert(id, this);
        Ok(Booking { pool: self.clone(), id })
    }

    /// Whether `this` can be done by its deadline after the work booked ahead of it, with every
    /// worker on it.
    fn fits(&self, inner: &Inner, this: &Booked) -> Result<(), Overloaded> {
        let ahead: Vec<&Booked> = inner.booked.values().filter(|b| b.goes_before(this)).collect();
        let work: Duration = ahead.iter().map(|b| b.need).sum::<Duration>() + this.need;
        let capacity = this.deadline.saturating_duration_since(Instant::now()) * self.count as u32;
        if work > capacity {
            return Err(self.overloaded(inner, ahead.len()));
        }
        Ok(())
    }

    /// The refusal, counting as waiting the alarms queued for a worker or, when more, the `ahead`
    /// bookings that left no room.
    fn overloaded(&self, inner: &Inner, ahead: usize) -> Overloaded {
        Overloaded {
            waiting: ahead.max(inner.waiting.len()),
            workers: self.count,
        }
    }

    /// Waits for a permit, served by `urgency`, then earliest `deadline` first. Gives up when the
    /// work still needed (`need`) could no longer be done by the deadline.
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: Instant,
        need: Duration,
        urgency: Urgency,
    ) -> Result<Permit, Overloaded> {
        let latest_start = deadline.checked_sub(need).unwrap_or_else(Instant::now);
        let receiver = {
            let mut inner = self.lock();
            if Instant::now() > latest_start {
                // Work that cannot end in time would only take a worker from work that can.
                return Err(self.overloaded(&inner, 0));
            }
            if inner.free > 0 && inner.waiting.is_empty() {
                inner.free -= 1;
                return Ok(Permit {
                    pool: Some(self.clone()),
                });
            }
            let (grant, receiver) = oneshot::channel();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.waiting.push(Waiter {
                urgency,
                deadline,
                seq,
                grant,
            });
            receiver
        };
        match tokio::time::timeout_at(latest_start, receiver).await {
            Ok(Ok(permit)) => Ok(permit),
            // The receiver is dropped here: a permit granted meanwhile goes back to the pool.
            _ => {
                let mut inner = self.lock();
                // Waiters that gave up stay in the heap until a release passes them; drop them here.
                inner.waiting.retain(|w| !w.grant.is_closed());
                Err(self.overloaded(&inner, 0))
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

    /// When two alarms, `(deadline in s, urgency)`, wait for the only worker of a pool: the times
    /// each was granted it, after the worker held first is given back.
    async fn granted_at(a: (u64, Urgency), b: (u64, Urgency)) -> (Instant, Instant) {
        let pool = Workers::new(1);
        let now = Instant::now();
        let held = pool
            .acquire(now + Duration::from_secs(10), MIN_STEP, Urgency::Normal)
            .await
            .expect("free");
        assert!(pool.is_contended());
        let wait = |(seconds, urgency): (u64, Urgency)| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let _p = pool
                    .acquire(now + Duration::from_secs(seconds), MIN_STEP, urgency)
                    .await;
                Instant::now()
            })
        };
        let (a, b) = (wait(a), wait(b));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let granted = (a.await.expect("a"), b.await.expect("b"));
        assert!(!pool.is_contended());
        granted
    }

    #[tokio::test]
    async fn permits_go_to_the_earliest_deadline_first() {
        let (late, early) = granted_at((9, Urgency::Normal), (5, Urgency::Normal)).await;
        assert!(early <= late, "the nearer deadline was served after the later one");
    }

    #[tokio::test]
    async fn a_likely_intrusion_goes_before_an_earlier_deadline() {
        let (normal, likely) = granted_at((5, Urgency::Normal), (9, Urgency::Likely)).await;
        assert!(
            likely <= normal,
            "the likely intrusion was served after the normal work"
        );
    }

    #[tokio::test]
    async fn work_that_cannot_end_in_time_gets_no_free_worker() {
        let pool = Workers::new(2);
        let now = Instant::now();
        let refused = pool
            .acquire(
                now + Duration::from_millis(100),
                Duration::from_millis(500),
                Urgency::Normal,
            )
            .await;
        assert!(
            refused.is_err(),
            "a free worker was given to work that cannot end in time"
        );
        assert!(
            pool.acquire(
                now + Duration::from_secs(1),
                Duration::from_millis(500),
                Urgency::Normal
            )
            .await
            .is_ok()
        );
    }

    #[test]
    fn work_that_does_not_fit_behind_the_work_booked_ahead_is_refused() {
        let pool = Workers::new(2);
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        // 2 workers x 10 s = 20 s of work fit before the deadline.
        let first = pool
            .book(deadline, Duration::from_secs(12), Urgency::Normal)
            .expect("fits");
        assert!(pool.book(deadline, Duration::from_secs(9), Urgency::Normal).is_err());
        let later = pool
            .book(
                deadline + Duration::from_secs(5),
                Duration::from_secs(9),
                Urgency::Normal,
            )
            .expect("a later deadline has more time");
        // A likely intrusion goes before both, so only the work booked as likely is ahead of it.
        assert!(
            pool.book(deadline, Duration::from_secs(15), Urgency::Likely).is_ok(),
            "likely work waits for nothing booked as normal"
        );
        first
            .update(Duration::from_secs(1), Urgency::Normal)
            .expect("less than before");
        assert!(pool.book(deadline, Duration::from_secs(9), Urgency::Normal).is_ok());
        assert!(
            later.update(Duration::from_secs(40), Urgency::Normal).is_err(),
            "work grown past its deadline still fits"
        );
        drop((first, later));
        assert!(pool.lock().booked.is_empty(), "the dropped bookings were not cancelled");
    }

    #[tokio::test]
    async fn an_alarm_that_cannot_finish_in_time_is_refused_early() {
        let pool = Workers::new(1);
        let now = Instant::now();
        let _held = pool
            .acquire(now + Duration::from_secs(10), MIN_STEP, Urgency::Normal)
            .await
            .expect("free");
        let refused = pool
            .acquire(
                now + Duration::from_millis(300),
                Duration::from_millis(200),
                Urgency::Normal,
            )
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
            .acquire(now + Duration::from_secs(10), MIN_STEP, Urgency::Normal)
            .await
            .expect("free");
        let _ = pool
            .acquire(now + Duration::from_millis(100), MIN_STEP, Urgency::Normal)
            .await;
        drop(held);
        let again = tokio::time::timeout(
            Duration::from_millis(200),
            pool.acquire(now + Duration::from_secs(10), MIN_STEP, Urgency::Normal),
        );
        assert!(matches!(again.await, Ok(Ok(_))), "the permit was lost");
    }
}
