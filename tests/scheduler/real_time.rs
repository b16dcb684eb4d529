//! The loop on the machine's clock (`SystemClock`), where it ends its sleeps on the thread
//! timer rather than on Tokio's millisecond timer. Real but short times (tens of
//! milliseconds): paused time would not exercise that timer. How *little* late the runs are
//! is a figure of the bench (S3), not of a test; what is tested is that no run starts
//! before its time and that each starts, on both runtime flavours.

use std::time::Duration;

use apsched::trigger::Date;
use apsched::{JobContext, Scheduler};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;

/// Long enough for any step here; reached only when something is broken.
const HANG: Duration = Duration::from_secs(20);

/// Adds one-shot jobs due 20, 25, ... ms from now (in reverse order), and returns each
/// run's (scheduled time, the clock's reading when its body started).
async fn starts_of_staggered_jobs(n: i64) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let s = Scheduler::builder().build();
    s.start().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let base = Utc::now() + TimeDelta::milliseconds(20);
    for i in (0..n).rev() {
        let tx = tx.clone();
        s.add_job(move |ctx: JobContext| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((ctx.scheduled_run_time(), Utc::now()));
            }
        })
        .trigger(Date::at(base + TimeDelta::milliseconds(5 * i), None).unwrap())
        .id(format!("at+{}ms", 20 + 5 * i))
        .await
        .unwrap();
    }
    let mut starts = Vec::new();
    for _ in 0..n {
        let start = tokio::time::timeout(HANG, rx.recv())
            .await
            .expect("every job runs")
            .unwrap();
        starts.push(start);
    }
    s.shutdown().await.unwrap();
    starts
}

fn assert_on_time(starts: &[(DateTime<Utc>, DateTime<Utc>)]) {
    for (scheduled, started) in starts {
        assert!(
            started >= scheduled,
            "a run due at {scheduled} started early, at {started}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_the_system_clock_start_at_their_times_never_before() {
    assert_on_time(&starts_of_staggered_jobs(5).await);
}

#[tokio::test(flavor = "current_thread")]
async fn runs_on_the_system_clock_start_at_their_times_on_a_current_thread_runtime() {
    assert_on_time(&starts_of_staggered_jobs(5).await);
}
