//! Blocking work called from async code (SQLite commits, which wait for fsync, and the store's
//! mutex): run so that the runtime's other tasks are not held up behind it.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` here, first handing this worker's other tasks to another thread
/// ([`tokio::task::block_in_place`]) when called on a multi-threaded runtime. Elsewhere (a plain
/// thread, a blocking-pool thread, a current-thread runtime as in unit tests) it just runs.
///
/// Chosen over `spawn_blocking` because callers keep their borrows and their synchronous
/// signatures (the intakes' `AlarmSink::accept`), and a lock held around the work stays on one
/// thread.
pub fn off_runtime<R>(work: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_work_does_not_hold_up_the_only_worker() {
        let ticker = tokio::spawn(async {
            let mut ticks = 0;
            for _ in 0..5 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                ticks += 1;
            }
            ticks
        });
        // The one worker is blocked for 300 ms; the ticker still runs meanwhile.
        let started = std::time::Instant::now();
        off_runtime(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        assert!(ticker.is_finished(), "the ticker waited behind the blocking work");
        assert_eq!(ticker.await.ok(), Some(5));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_it_just_runs() {
        assert_eq!(off_runtime(|| 7), 7);
    }

    #[test]
    fn outside_a_runtime_it_just_runs() {
        assert_eq!(off_runtime(|| 7), 7);
    }
}
