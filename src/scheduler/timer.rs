//! The thread timer that ends the loop's sleeps on time.
//!
//! Tokio's timer wheel counts whole milliseconds: it rounds a deadline up to the next
//! tick, and its driver parks for whole milliseconds, so a `tokio::time::sleep` ends up to
//! 2 ms after its deadline (1.1 ms at the median, 2 ms at the 99th percentile, measured on
//! the bench machine). Every run of a job would start that late. The loop therefore sleeps
//! on Tokio's timer until [`MARGIN`] before a due time and the rest of the way on this
//! timer: one thread for the process that waits on a condition variable with a deadline,
//! which the kernel's high-resolution timers end within tens of microseconds.
//!
//! Only for a clock that reads the machine's real time
//! ([`Clock::is_real_time`](crate::clock::Clock::is_real_time)): a test clock follows
//! Tokio's paused time, which this thread knows nothing about.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

use crate::sync::MutexExt;

/// How long before a due time the loop hands its sleep over to this timer: Tokio's timer
/// may end the first part up to about 2 ms late, which this leaves room for.
pub(crate) const MARGIN: Duration = Duration::from_millis(3);

/// The sleeps waiting on the thread.
#[derive(Default)]
struct Timer {
    sleeps: Mutex<Sleeps>,
    /// Signalled when a sleep is added, so the thread waits for the new earliest deadline.
    added: Condvar,
}

#[derive(Default)]
struct Sleeps {
    /// Each sleep's deadline and waker, in no order: there are a handful at most (one per
    /// scheduler loop in its last milliseconds before a due time).
    waiting: Vec<(u64, Instant, Arc<AtomicWaker>)>,
    /// The key of the last sleep added.
    last_key: u64,
}

/// The process's timer thread, started on first use; `None` if the thread could not be
/// started (the loop then sleeps on Tokio's timer alone).
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("apsched-timer".into())
            .spawn(move || run(timer))
            .ok()
            .map(|_| timer)
    })
}

/// The thread: wakes each sleep at its deadline, waiting for the earliest in between.
fn run(timer: &Timer) {
    let mut sleeps = timer.sleeps.lock_unpoisoned();
    loop {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        // Wake the due sleeps, taking them off the list, and find the next deadline.
        sleeps.waiting.retain(|(_, deadline, waker)| {
            if *deadline <= now {
                waker.wake();
                false
            } else {
                earliest = Some(earliest.map_or(*deadline, |e| e.min(*deadline)));
                true
            }
        });
        sleeps = match earliest {
            None => timer.added.wait(sleeps).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                timer
                    .added
                    .wait_timeout(sleeps, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// A sleep until `deadline` on the timer thread; Tokio's timer if the thread is missing.
pub(crate) async fn sleep_until(deadline: Instant) {
    match timer() {
        Some(timer) => {
            Sleep {
                timer,
                deadline,
                key: None,
            }
            .await
        }
        None => tokio::time::sleep_until(deadline.into()).await,
    }
}

/// The future of [`sleep_until`]: registered with the thread on its first poll, removed
/// when it ends or is dropped (a loop woken early for another reason drops its sleep).
struct Sleep {
    timer: &'static Timer,
    deadline: Instant,
    /// Its key in the thread's list, once registered, and its waker there.
    key: Option<(u64, Arc<AtomicWaker>)>,
}

impl Sleep {
    /// Takes the sleep off the thread's list (it ended, or nobody waits for it any more).
    fn unregister(&mut self) {
        if let Some((key, _)) = self.key.take() {
            let mut sleeps = self.timer.sleeps.lock_unpoisoned();
            sleeps.waiting.retain(|(k, _, _)| *k != key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        match &self.key {
            // `register` before the next check of the time: a wake in between is not lost.
            Some((_, waker)) => waker.register(cx.waker()),
            None => {
                let waker = Arc::new(AtomicWaker::new());
                waker.register(cx.waker());
                let mut sleeps = self.timer.sleeps.lock_unpoisoned();
                sleeps.last_key += 1;
                let key = sleeps.last_key;
                sleeps.waiting.push((key, self.deadline, waker.clone()));
                drop(sleeps);
                self.timer.added.notify_one();
                self.key = Some((key, waker));
            }
        }
        if Instant::now() >= self.deadline {
            self.unregister();
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_listed(key: u64) -> bool {
        let sleeps = timer().unwrap().sleeps.lock_unpoisoned();
        sleeps.waiting.iter().any(|(k, _, _)| *k == key)
    }

    fn key(sleep: &Sleep) -> u64 {
        sleep.key.as_ref().expect("registered").0
    }

    fn sleep(deadline: Instant) -> Sleep {
        Sleep {
            timer: timer().expect("the timer thread starts"),
            deadline,
            key: None,
        }
    }

    /// Real time: these sleeps are a few milliseconds of the machine's clock.
    #[tokio::test]
    async fn sleeps_end_at_their_deadlines_in_order() {
        let start = Instant::now();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let sleeps = [3u64, 1, 2].into_iter().enumerate().map(|(i, ms)| {
            let ended = ended.clone();
            let deadline = start + Duration::from_millis(ms);
            async move {
                sleep_until(deadline).await;
                assert!(
                    Instant::now() >= deadline,
                    "a sleep ended before its deadline"
                );
                ended.lock_unpoisoned().push(i);
            }
        });
        futures::future::join_all(sleeps).await;
        assert_eq!(*ended.lock_unpoisoned(), vec![1, 2, 0]);
        // A deadline already past is ready at once.
        let mut past = std::pin::pin!(sleep(start));
        assert!(futures::poll!(past.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn a_sleep_leaves_the_list_when_it_ends_or_is_dropped() {
        let mut ending = std::pin::pin!(sleep(Instant::now() + Duration::from_millis(2)));
        assert!(futures::poll!(ending.as_mut()).is_pending());
        let ending_key = key(&ending);
        assert!(is_listed(ending_key));
        ending.as_mut().await;
        assert!(!is_listed(ending_key), "an ended sleep is still listed");

        let mut dropped = Box::pin(sleep(Instant::now() + Duration::from_secs(3600)));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        let dropped_key = key(&dropped);
        assert!(is_listed(dropped_key));
        drop(dropped);
        assert!(!is_listed(dropped_key), "a dropped sleep is still listed");
    }
}
